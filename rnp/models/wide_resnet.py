import torch.nn.functional as F
from torch import nn

from .base import MODELS
from .resnet import PreActBlock  # a WRN block is a pre-activation block (dropout 0)

__all__ = ["wrn16_1"]


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        blocks, c_in = [], channels[0]
        for i, c in enumerate(channels[1:]):
            for j in range(n):
                blocks.append(PreActBlock(c_in, c, (1 if i == 0 else 2) if j == 0 else 1))
                c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.linear = nn.Linear(c_in, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("wrn16_1")
def wrn16_1(num_classes: int, in_channels: int) -> nn.Module:
    """Wide-ResNet-16-1 (Zagoruyko & Komodakis 2016), the small model of the NAD/RNP literature."""
    return WideResNet(16, 1, num_classes, in_channels)
