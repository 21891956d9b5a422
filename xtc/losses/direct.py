"""Direct (per-task, supervised) losses as modules (docs/method.md §3.1).

The loss functions live with their task (:mod:`xtc.tasks.seg`, :mod:`xtc.tasks.depth`,
:mod:`xtc.tasks.normal`); these thin modules store the hyperparameters and call those functions.
"""

from __future__ import annotations

import torch
from torch import nn

from xtc.errors import ConfigError
from xtc.tasks.base import fill_invalid as _fill_invalid  # noqa: F401
from xtc.tasks.base import masked_image_mean  # noqa: F401
from xtc.tasks.depth import DEPTH_KINDS, depth_error, depth_loss  # noqa: F401
from xtc.tasks.normal import LOSS_KINDS as NORMAL_KINDS
from xtc.tasks.normal import normal_loss
from xtc.tasks.seg import IGNORE_INDEX, seg_loss  # noqa: F401
from xtc.tasks.seg import check_seg as _check_seg  # noqa: F401


class SegLoss(nn.Module):
    """Module form of :func:`xtc.tasks.seg.seg_loss`."""

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return seg_loss(logits, target, self.ignore_index)


class DepthLoss(nn.Module):
    """Module form of :func:`xtc.tasks.depth.depth_loss`."""

    def __init__(self, kind: str = "l1"):
        super().__init__()
        if kind not in DEPTH_KINDS:
            raise ConfigError(f"unknown depth loss kind '{kind}'; choose one of "
                              f"{list(DEPTH_KINDS)}")
        self.kind = kind

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return depth_loss(pred, target, mask, self.kind)


class NormalLoss(nn.Module):
    """Module form of :func:`xtc.tasks.normal.normal_loss`."""

    def __init__(self, kind: str = "cosine"):
        super().__init__()
        if kind not in NORMAL_KINDS:
            raise ConfigError(f"unknown normal loss '{kind}'; choose one of {list(NORMAL_KINDS)}")
        self.kind = kind

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        return normal_loss(pred, target, mask, self.kind)
