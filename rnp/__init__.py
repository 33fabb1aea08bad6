"""rnp: Reconstructive Neuron Pruning (Li et al., ICML 2023) as a package and a DVC/Snakemake pipeline.

    purified, report = rnp.defend(model, rnp.CleanData(images, labels, mean, std, num_classes), rnp.DefendOptions(...))
"""

__version__ = "0.1.0"
__all__ = ["defend", "CleanData", "DefendOptions", "DefenseReport", "__version__"]
_LAZY = {"defend", "CleanData", "DefendOptions", "DefenseReport"}


def __getattr__(name: str):
    # rnp.defend(model, data, ...) without making `import rnp` load torch and the whole package:
    # a stage imports only what it uses, so dvc.yaml can list exactly the code that changes its numbers
    if name in _LAZY:
        from . import defense

        return getattr(defense, name)
    raise AttributeError(f"module 'rnp' has no attribute {name!r}")
