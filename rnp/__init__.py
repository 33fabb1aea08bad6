"""rnp: Reconstructive Neuron Pruning (Li et al., ICML 2023) as a package and a DVC/Snakemake pipeline."""

__version__ = "0.1.0"
__all__ = ["defend", "__version__"]


def __getattr__(name: str):
    # rnp.defend(model, images, labels, ...) without making `import rnp` load torch and the whole package:
    # a stage imports only what it uses, so dvc.yaml can list exactly the code that changes its numbers
    if name == "defend":
        from .defense import defend

        return defend
    raise AttributeError(f"module 'rnp' has no attribute {name!r}")
