"""Architectures: each module registers its own (`@MODELS.register("name")`); adding one touches one file.

A model file is safetensors: the state dict plus JSON metadata, enough to rebuild
the module without executing anything from the file (rnp.models.base).
"""

from . import mobilenet, resnet, small_cnn, vgg, wide_resnet  # noqa: F401  (each registers its architectures)
from .base import (
    MODELS,
    OPEN_ENDED,
    TIMM,
    TORCHVISION,
    ModelSpec,
    create_model,
    list_models,
    load_model,
    load_state,
    model_bytes,
    timm_classifier,
    timm_normalisation,
    torchvision_classifier,
)

__all__ = ["MODELS", "TORCHVISION", "TIMM", "OPEN_ENDED", "ModelSpec", "create_model", "list_models", "model_bytes", "load_model", "load_state",
           "torchvision_classifier", "timm_classifier", "timm_normalisation"]
