"""Cross-task losses: consistency (vs detached direct predictions) and alignment (vs ground
truth), for every edge ``a2b`` of the transfer graph.

docs/method.md §3.2-3.3. A transferred prediction ``a2b`` is compared with a *target* that
carries no gradient: ``b``'s pseudo-target (its stop-grad direct prediction, as
``Task.pseudo_target`` shapes it: argmax labels for segmentation, unit vectors for normals)
for consistency, ``b``'s ground truth for alignment. So a cross-task term trains its transfer
net, the *source* decoder ``a`` and the encoder, never the decoder ``b`` that produced the
target (the gradient-routing property, tested for every edge).

Masks, the same for both versions: a term into ``b`` counts the pixels where ``b`` has
ground truth (``depth_mask``, ``normal_mask``, ``seg_target != -1``; the authors' Cityscapes
code masks the consistency term with the label mask), so both versions see the same pixels.
The loss of a transfer into ``b`` is ``b``'s (``Task.transfer_loss``): ``loss.seg2depth_loss``
(l1 | ssim | ...) into depth, ``loss.depth2seg_loss`` (ce | kl) into seg, ``loss.normal_loss``
into normals.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from xtc.errors import ConfigError
from xtc.tasks import TASKS, Task, split_edge
from xtc.tasks.depth import TRANSFER_KINDS as SEG2DEPTH_KINDS
from xtc.tasks.depth import Depth, seg2depth_loss, ssim_dissimilarity  # noqa: F401
from xtc.tasks.seg import TRANSFER_KINDS as DEPTH2SEG_KINDS
from xtc.tasks.seg import Segmentation, depth2seg_loss  # noqa: F401

CROSS_TASK_MODES = ("consistency", "alignment", "both")
PAPER_EDGES = ("seg2depth", "depth2seg")


def pseudo_targets(predictions: dict[str, torch.Tensor],
                   tasks: Optional[dict[str, Task]] = None) -> dict[str, torch.Tensor]:
    """Detached direct predictions of every task in ``predictions``, in their target form:
    ``depth`` (B, 1, H, W), ``seg`` = argmax labels (B, H, W), ``normal`` unit vectors."""
    tasks = tasks or {t: TASKS.get(t)() for t in predictions if t in TASKS}
    return {t: task.pseudo_target(predictions[t]) for t, task in tasks.items() if t in predictions}


def edge_terms(predictions: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
               edges: Sequence[str], tasks: dict[str, Task],
               mode: str = "consistency") -> dict[str, torch.Tensor]:
    """``{a2b: scalar}`` for every edge: ``consistency`` (vs b's pseudo-target),
    ``alignment`` (vs b's ground truth) or ``both`` (the mean of the two, so lambda keeps
    its scale)."""
    if mode not in CROSS_TASK_MODES:
        raise ConfigError(f"unknown cross_task '{mode}'; choose one of {list(CROSS_TASK_MODES)}")
    out = {}
    for name in edges:
        target = tasks[split_edge(name)[1]]
        transferred = predictions[name]
        if mode in ("consistency", "both"):
            pseudo = target.pseudo_target(predictions[target.name])
            consistency = target.transfer_loss(transferred, pseudo, batch)
        if mode in ("alignment", "both"):
            alignment = target.transfer_loss(transferred, target.target(batch), batch)
        out[name] = (consistency if mode == "consistency" else alignment if mode == "alignment"
                     else 0.5 * (consistency + alignment))
    return out


def _paper_tasks(seg2depth: str, depth2seg: str, label_smoothing: float,
                 ssim_max_val: float, num_classes: int = 0) -> dict[str, Task]:
    return {"seg": Segmentation(num_classes, kind=depth2seg, label_smoothing=label_smoothing),
            "depth": Depth(num_classes, transfer_kind=seg2depth, ssim_max_val=ssim_max_val)}


def cross_task_loss(predictions: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                    mode: str = "consistency", seg2depth: str = "l1", depth2seg: str = "ce",
                    label_smoothing: float = 0.0,
                    ssim_max_val: float = 1.0) -> dict[str, torch.Tensor]:
    """The paper's two terms ``seg2depth`` and ``depth2seg`` for ``mode`` (consistency |
    alignment | both); :func:`edge_terms` is the same for any graph."""
    tasks = _paper_tasks(seg2depth, depth2seg, label_smoothing, ssim_max_val)
    return edge_terms(predictions, batch, PAPER_EDGES, tasks, mode)


def consistency_loss(predictions: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                     **kinds) -> dict[str, torch.Tensor]:
    """Cross-task consistency (the authors' ``xtsc``; docs/method.md §3.2): transferred
    predictions vs the :func:`pseudo_targets` (stop-grad direct depth, argmax of stop-grad
    direct logits). Label-free except for the masks. Returns ``{"seg2depth", "depth2seg"}``."""
    return cross_task_loss(predictions, batch, "consistency", **kinds)


def alignment_loss(predictions: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                   **kinds) -> dict[str, torch.Tensor]:
    """Alignment (the authors' ``xtc``, Zamir et al. 2020's X-TC): transferred predictions vs
    the ground truth. Returns the same keys as :func:`consistency_loss`."""
    return cross_task_loss(predictions, batch, "alignment", **kinds)


class CrossTaskLoss(nn.Module):
    """The cross-task terms of a transfer graph (default the paper's two edges).

    Args:
        mode: consistency | alignment | both.
        seg2depth, depth2seg, label_smoothing, ssim_max_val: the paper graph's loss kinds
            (used when ``tasks`` is not given).
        edges, tasks: the graph's edges and configured :class:`Task` instances.
    """

    def __init__(self, mode: str = "consistency", seg2depth: str = "l1", depth2seg: str = "ce",
                 label_smoothing: float = 0.0, ssim_max_val: float = 1.0,
                 edges: Optional[Sequence[str]] = None, tasks: Optional[dict[str, Task]] = None):
        super().__init__()
        if mode not in CROSS_TASK_MODES:
            raise ConfigError(f"unknown cross_task '{mode}'; choose one of "
                              f"{list(CROSS_TASK_MODES)}")
        if seg2depth not in SEG2DEPTH_KINDS:
            raise ConfigError(f"unknown seg2depth loss '{seg2depth}'; choose one of "
                              f"{list(SEG2DEPTH_KINDS)}")
        if depth2seg not in DEPTH2SEG_KINDS:
            raise ConfigError(f"unknown depth2seg loss '{depth2seg}'; choose one of "
                              f"{list(DEPTH2SEG_KINDS)}")
        self.mode = mode
        self.edges = list(edges) if edges is not None else list(PAPER_EDGES)
        self.tasks = tasks if tasks is not None else _paper_tasks(
            seg2depth, depth2seg, label_smoothing, ssim_max_val)

    def forward(self, predictions: dict[str, torch.Tensor],
                batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return edge_terms(predictions, batch, self.edges, self.tasks, self.mode)
