"""rnp: Reconstructive Neuron Pruning (Li et al., ICML 2023) as a package and a DVC/Snakemake pipeline."""

__version__ = "0.1.0"
