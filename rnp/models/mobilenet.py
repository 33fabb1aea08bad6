from torch import nn

from .base import MODELS

__all__ = ["mobilenet_v2"]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int, groups: int = 1, relu: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    return layers + [nn.ReLU6(inplace=True)] if relu else layers


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = _conv_bn(c_in, hidden, 1, 1) if expand != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, c_out, 1, 1, relu=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


# (expansion, channels, repeats, first stride); CIFAR variant: stride 1 in the stem and the second stage
_PLAN = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers, c_in = _conv_bn(in_channels, 32, 3, 1), 32
        for t, c, n, s in _PLAN:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers += _conv_bn(c_in, 1280, 1, 1) + [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@MODELS.register("mobilenet_v2")
def mobilenet_v2(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style MobileNetV2 (inverted residuals, depthwise convs, 52 BN layers)."""
    return MobileNetV2(num_classes, in_channels)
