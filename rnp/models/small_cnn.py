from torch import nn

from .base import MODELS

__all__ = ["SmallCNN", "small_cnn"]


def _conv_bn_relu(c_in: int, c_out: int, norm: str = "bn") -> nn.Sequential:
    if norm == "bn":
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(8, c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks, one pooling step, global average pool, linear head."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32, norm: str = "bn"):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width, norm),
            _conv_bn_relu(width, 2 * width, norm),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * width, 4 * width, norm),
            _conv_bn_relu(4 * width, 4 * width, norm),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@MODELS.register("small_cnn")
def small_cnn(num_classes: int, in_channels: int) -> nn.Module:
    """Small BN CNN (4 conv-BN blocks, 32-128 channels): the fast default for digits."""
    return SmallCNN(num_classes, in_channels)


@MODELS.register("small_cnn_gn")
def small_cnn_gn(num_classes: int, in_channels: int) -> nn.Module:
    """The small CNN with GroupNorm (8 groups) instead of BatchNorm: for RNP without BN (recover.mask_on norm/conv)."""
    return SmallCNN(num_classes, in_channels, norm="gn")
