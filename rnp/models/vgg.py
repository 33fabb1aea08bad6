from torch import nn

from .base import MODELS

__all__ = ["vgg16_bn"]

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, plan: tuple, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers, c_in = [], in_channels
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: small inputs never shrink to 0
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@MODELS.register("vgg16_bn")
def vgg16_bn(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style VGG-16 with BatchNorm (13 conv-BN layers, global-pool linear head)."""
    return VGG(_VGG16, num_classes, in_channels)
