"""Architectures: each module registers its own (`@MODELS.register("name")`); adding one touches one file.

A model file is safetensors: the state dict plus JSON metadata, enough to rebuild
the module without executing anything from the file (rnp.models.base).
"""

from . import mobilenet, resnet, small_cnn, vgg, wide_resnet  # noqa: F401  (each registers its architectures)
from .base import MODELS, TORCHVISION, ModelSpec, create_model, list_models, load_model, load_state, model_bytes, torchvision_classifier

__all__ = ["MODELS", "TORCHVISION", "ModelSpec", "create_model", "list_models", "model_bytes", "load_model", "load_state", "torchvision_classifier"]
