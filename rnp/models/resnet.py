import torch.nn.functional as F
from torch import nn

from .base import MODELS

__all__ = ["ResNet", "resnet18", "resnet18_half"]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stages(block: type, blocks: tuple[int, ...], width: int = 64) -> tuple[list[nn.Sequential], int]:
    """Four stages of width, 2, 4 and 8 x width channels (64-512); each but the first halves the resolution."""
    stages, c_in = [], width
    for i, n in enumerate(blocks):
        c_out, stride = width * 2**i, 1 if i == 0 else 2
        stage = []
        for s in [stride] + [1] * (n - 1):
            stage.append(block(c_in, c_out, s))
            c_in = c_out
        stages.append(nn.Sequential(*stage))
    return stages, c_in


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, no max-pool, four stages of BasicBlocks."""

    def __init__(self, blocks: tuple[int, ...], num_classes: int, in_channels: int = 3, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, c_in = _stages(BasicBlock, blocks, width)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@MODELS.register("resnet18")
def resnet18(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style ResNet-18 (11M parameters, 4,800 BN channels), as in the RNP paper."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


@MODELS.register("resnet18_half")
def resnet18_half(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style ResNet-18 at half width (2.8M parameters, 2,400 BN channels), a quarter of its convolution work.

    For runs at the reference's training length on a CPU (docs/quality.md)."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels, width=32)


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016): BN-ReLU before each conv."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        layers, c_in = _stages(PreActBlock, blocks)
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c_in)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("resnet34")
def resnet34(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style ResNet-34 (21M parameters)."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels)


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int, in_channels: int) -> nn.Module:
    """CIFAR-style pre-activation ResNet-18, as in BackdoorBench."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)
