"""rnp: Reconstructive Neuron Pruning (Li et al., ICML 2023) as a package and a DVC/Snakemake pipeline."""

__version__ = "0.1.0"


from .purify import defend  # noqa: E402  (rnp.defend(model, images, labels, ...))

__all__ = ["defend", "__version__"]
