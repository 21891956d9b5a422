"""U-Net-like task decoder (docs/method.md §2.2).

Five ConvBlocks, each three [3x3 conv -> BN -> ReLU] layers followed by x2 bilinear upsampling,
with concatenation skips from enc3..enc0, and a 1x1 head without bias.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def init_weights(module: nn.Module) -> None:
    """The authors' initialisation: Xavier-normal conv weights, zero bias, BN gamma=1, beta=0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """x2 bilinear upsampling with ``align_corners=True``, as in the authors' code."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class ConvBlock(nn.Module):
    """Three [3x3 conv (bias) -> BN -> ReLU] layers ``in -> mid -> mid -> out``, then x2 upsample.

    Shapes: (B, in, H, W) -> (B, out, 2H, 2W).
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        widths = (in_channels, mid_channels, mid_channels, out_channels)
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=True), nn.BatchNorm2d(b),
                       nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2x(self.body(x))


class Decoder(nn.Module):
    """Decoder for one task.

    Args:
        encoder_channels: channels of enc0..enc4 (e.g. (64, 64, 128, 256, 512) for ResNet-34).
        out_channels: K segmentation logits, or 1 for depth.
        width: channels of every ConvBlock (paper: 128).

    Shapes: features enc_i (B, C_i, H/2^(i+1), W/2^(i+1)) -> (B, out_channels, H, W).
    The output has no activation: the depth output is unbounded (may be negative) as in the
    paper (docs/method.md §2.2, §11 defect 17); metrics and plots must clamp where they divide.
    """

    def __init__(self, encoder_channels: Sequence[int], out_channels: int, width: int = 128):
        super().__init__()
        c0, c1, c2, c3, c4 = encoder_channels
        self.blocks = nn.ModuleList([
            ConvBlock(c4, width, width),           # /32 -> /16
            ConvBlock(width + c3, width, width),   # /16 -> /8
            ConvBlock(width + c2, width, width),   # /8 -> /4
            ConvBlock(width + c1, width, width),   # /4 -> /2
            ConvBlock(width + c0, width, width),   # /2 -> /1
        ])
        self.head = nn.Conv2d(width, out_channels, 1, bias=False)
        init_weights(self)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.blocks[0](features[4])
        for block, skip in zip(self.blocks[1:], (features[3], features[2], features[1],
                                                 features[0])):
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)
