"""Task-transfer network: the skip-connected U-Net of the authors (docs/method.md §2.3).

``TaskTransferNet`` maps one task's *prediction* to the other task's output space; it never
sees image features. seg2depth takes ``log_softmax`` over classes of the segmentation logits,
depth2seg takes the raw depth (docs/method.md §2.3, §11 defect 18).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xtc.models.decoder import init_weights, upsample2x


def single_conv(a: int, b: int, batch_norm: bool) -> list[nn.Module]:
    """3x3 conv (bias) -> [BN] -> ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(a, b, 3, padding=1, bias=True)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(b))
    layers.append(nn.ReLU(inplace=True))
    return layers


class TTDown(nn.Sequential):
    """SingleConv(a->b) -> SingleConv(b->b) -> MaxPool 2x2. (B, a, H, W) -> (B, b, H/2, W/2)."""

    def __init__(self, a: int, b: int, batch_norm: bool):
        super().__init__(*single_conv(a, b, batch_norm), *single_conv(b, b, batch_norm),
                         nn.MaxPool2d(2))


class TTUp(nn.Module):
    """x2 bilinear upsample first, then SingleConv(a->b) -> SingleConv(b->b).

    Shapes: (B, a, H, W) -> (B, b, 2H, 2W).
    """

    def __init__(self, a: int, b: int, batch_norm: bool):
        super().__init__()
        self.body = nn.Sequential(*single_conv(a, b, batch_norm), *single_conv(b, b, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(upsample2x(x))


class TaskTransferNet(nn.Module):
    """Skip-connected U-Net ``T`` (``TaskTransferNetWithSkipCN`` in the authors' code).

    Args:
        in_channels: K for seg2depth, 1 for depth2seg.
        out_channels: 1 for seg2depth, K for depth2seg.
        width: w; the levels have (w, 2w, 4w) channels (paper: 64).
        batch_norm: BatchNorm after each conv (paper default: off).
        log_softmax_input: apply log_softmax over dim 1 to the input (seg2depth).

    Shapes: (B, in_channels, H, W) -> (B, out_channels, H, W), H and W divisible by 8.

    Examples:
        >>> net = TaskTransferNet(7, 1, width=8, log_softmax_input=True)
        >>> net(torch.randn(2, 7, 16, 24)).shape
        torch.Size([2, 1, 16, 24])
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 64,
                 batch_norm: bool = False, log_softmax_input: bool = False):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.in_channels = in_channels
        self.log_softmax_input = log_softmax_input
        self.down1 = TTDown(in_channels, w1, batch_norm)
        self.down2 = TTDown(w1, w2, batch_norm)
        self.down3 = TTDown(w2, w3, batch_norm)
        self.up1 = TTUp(w3, w2, batch_norm)
        self.up2 = TTUp(w2 + w2, w1, batch_norm)
        self.up3 = TTUp(w1 + w1, w1, batch_norm)
        self.head = nn.Conv2d(w1, out_channels, 1, bias=False)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"TaskTransferNet expects (B, {self.in_channels}, H, W) with H, W "
                             f"divisible by 8; got {tuple(x.shape)}")
        if self.log_softmax_input:
            x = F.log_softmax(x, dim=1)
        e1 = self.down1(x)    # (B, w, H/2, W/2)
        e2 = self.down2(e1)   # (B, 2w, H/4, W/4)
        e3 = self.down3(e2)   # (B, 4w, H/8, W/8)
        u1 = self.up1(e3)                          # (B, 2w, H/4, W/4)
        u2 = self.up2(torch.cat([u1, e2], dim=1))  # (B, w, H/2, W/2)
        u3 = self.up3(torch.cat([u2, e1], dim=1))  # (B, w, H, W)
        return self.head(u3)
