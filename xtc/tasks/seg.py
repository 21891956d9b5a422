"""Semantic segmentation: K-class logits, cross-entropy, dataset-level mIoU.

Batch: ``seg_target`` (B,H,W) int64, -1 = ignore (no separate mask key). Prediction ``seg``
(B,K,H,W) logits. Fed to a transfer net as ``log_softmax`` over the classes (the authors'
choice, docs/method.md §2.3). The metric functions are split-level: one confusion matrix over
every valid pixel of the split, never a mean of per-batch values (docs/method.md §7).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xtc.errors import ConfigError
from xtc.tasks.base import TASKS, Meter, Metric, Task

IGNORE_INDEX = -1
TRANSFER_KINDS = ("ce", "kl")  # loss.depth2seg_loss: the loss of every transfer into seg

# Cityscapes 7 categories: flat, construction, object, nature, sky, human, vehicle
CITYSCAPES_7 = np.array([[128, 64, 128], [70, 70, 70], [250, 170, 30], [107, 142, 35],
                         [70, 130, 180], [220, 20, 60], [0, 0, 142]], dtype=np.uint8)


def seg_palette(num_classes: int) -> np.ndarray:
    """``(K, 3)`` uint8 colours: the Cityscapes category palette for 7 classes, matplotlib's
    ``tab20`` otherwise."""
    if num_classes == 7:
        return CITYSCAPES_7.copy()
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return (np.array([cmap(i % 20)[:3] for i in range(num_classes)]) * 255).astype(np.uint8)


# ----------------------------------------------------------------------------- losses
def seg_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy over non-ignored pixels (docs/method.md §3.1).

    Args:
        logits: (B, K, H, W) segmentation logits.
        target: (B, H, W) long class indices, ``ignore_index`` (-1) = ignore.

    Returns:
        Scalar: the mean over all non-ignored pixels of the batch. A batch with every pixel
        ignored gives 0 (still connected to ``logits``, so backward works) rather than NaN.

    Examples:
        >>> seg_loss(torch.zeros(1, 4, 2, 2), torch.tensor([[[0, 1], [-1, 3]]]))
        tensor(1.3863)
    """
    check_seg(logits, target, "seg_loss")
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    valid = (target != ignore_index).sum()
    return total / valid.clamp_min(1)


def depth2seg_loss(logits: Tensor, target_labels: Tensor, kind: str = "ce",
                   label_smoothing: float = 0.0, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Transferred-segmentation loss against (pseudo-)labels (docs/method.md §3.3); the loss of
    every transfer into segmentation (``depth2seg``, ``normal2seg``, ...).

    q is the smoothed one-hot target: 1 - eps on the label, eps / (K - 1) elsewhere.
    ``ce``: -sum_c q_c log softmax(logits)_c; ``kl``: KL(q || softmax(logits)) =
    sum_c q_c (log q_c - log p_c) with 0 log 0 = 0 (a correct version of the authors' broken
    option, §11 defect 13; same gradient as ``ce``, minus the constant entropy of q).
    Both are averaged over the non-ignored pixels only (the authors counted masked pixels in
    the denominator); no valid pixel -> 0, connected to ``logits``.

    Shapes: logits (B, K, H, W); target_labels (B, H, W) long, ``ignore_index`` = ignore.
    """
    check_seg(logits, target_labels, "depth2seg_loss")
    if kind not in TRANSFER_KINDS:
        raise ConfigError(f"unknown depth2seg loss '{kind}'; choose one of {list(TRANSFER_KINDS)}")
    num_classes = logits.shape[1]
    eps = float(label_smoothing)
    valid = target_labels != ignore_index                          # (B, H, W)
    labels = torch.where(valid, target_labels, torch.zeros_like(target_labels))
    # one-hot by scatter: F.one_hot range-checks its input with two host syncs per call (a
    # GPU stall every step); labels are in range here. Built (B,H,W,K) and permuted, the
    # layout F.one_hot gave, so the loss is bit-identical to it.
    one_hot = (logits.new_zeros(*labels.shape, num_classes)
               .scatter_(-1, labels.unsqueeze(-1), 1.0).permute(0, 3, 1, 2))  # (B,K,H,W)
    q = one_hot * (1.0 - eps) + (1.0 - one_hot) * (eps / (num_classes - 1))
    log_p = F.log_softmax(logits, dim=1)
    per_pixel = -(q * log_p).sum(dim=1)                            # (B, H, W)
    if kind == "kl":
        per_pixel = per_pixel + torch.xlogy(q, q).sum(dim=1)
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    return per_pixel.sum() / valid.sum().clamp_min(1)


def check_seg(logits: Tensor, target: Tensor, name: str) -> None:
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"{name} expects logits (B, K, H, W) and target (B, H, W); got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    if target.dtype != torch.long:
        raise ValueError(f"{name}: target must be a long tensor of class indices; got "
                         f"{target.dtype}")


# ----------------------------------------------------------------------------- metrics
def _as_labels(logits_or_labels: Tensor, num_classes: int) -> Tensor:
    """Logits (B,K,H,W) float -> argmax labels (B,H,W); labels (B,H,W) int pass through."""
    x = logits_or_labels
    if x.is_floating_point():
        if x.dim() != 4 or x.shape[1] != num_classes:
            raise ValueError(f"segmentation logits must be (B,{num_classes},H,W); "
                             f"got {tuple(x.shape)}")
        return x.max(1).indices  # = argmax(1) (first maximum); the faster of the two on CPU
    if x.dim() != 3:
        raise ValueError(f"segmentation labels must be (B,H,W) integers; got {tuple(x.shape)}")
    return x.long()


def _check_label_range(labels: Tensor, k: int, message: str) -> None:
    """Labels outside [0, k) would be counted in another image's or class's bin: refuse them."""
    if labels.numel():
        lo, hi = torch.aminmax(labels)  # one pass
        if lo < 0 or hi >= k:
            raise ValueError(f"{message}; got range [{int(lo)}, {int(hi)}]")


def _per_image_confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int,
                         pred_checked: bool = False) -> Tensor:
    """(B,K,K) int64 confusion per image (rows = ground truth, cols = prediction), one bincount.

    Ignored pixels go to one extra bin that is dropped, so no boolean indexing (which costs a
    nonzero() and a gather over every pixel). ``pred_checked``: pred came from an argmax over
    K classes, so its range check is skipped.
    """
    if pred.shape != target.shape or target.dim() != 3:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                         f"must both be (B,H,W)")
    k, b = num_classes, target.shape[0]
    valid = target != ignore_index
    _check_label_range(torch.where(valid, target, 0), k,
                       f"target labels must be in [0,{k}) or ignore_index={ignore_index}")
    if not pred_checked:
        _check_label_range(pred, k, f"predicted labels must be in [0,{k})")
    bins = b * k * k
    dtype = torch.int32 if bins < 2**31 else torch.int64  # int32 halves the memory traffic
    image = torch.arange(b, device=target.device, dtype=dtype).view(-1, 1, 1) * (k * k)
    idx = torch.where(valid, image + target.to(dtype) * k + pred.to(dtype), bins)
    return torch.bincount(idx.reshape(-1), minlength=bins + 1)[:bins].view(b, k, k)


def confusion_matrix(pred_labels: Tensor, target: Tensor, num_classes: int,
                     ignore_index: int = -1) -> Tensor:
    """Confusion matrix (K,K) int64, rows = ground truth, cols = prediction.

    pred_labels: (B,H,W) int in [0,K) (or logits (B,K,H,W), argmaxed); target: (B,H,W) int with
    ``ignore_index`` pixels left out entirely.

    Example:
        >>> confusion_matrix(torch.tensor([[[0, 1, 1]]]), torch.tensor([[[0, 0, -1]]]), 2)
        tensor([[1, 1],
                [0, 0]])
    """
    pred = _as_labels(pred_labels, num_classes)
    return _per_image_confusion(pred, target, num_classes, ignore_index,
                                pred_checked=pred_labels.is_floating_point()).sum(0)


def iou_from_confusion(conf: Tensor) -> Tensor:
    """Per-class IoU_j = C_jj / (sum_i C_ji + sum_i C_ij - C_jj), float64 (K,).

    NaN where the union is 0, i.e. class j is absent from both prediction and ground truth.
    """
    conf = conf.double()
    inter = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))


def miou_from_confusion(conf: Tensor) -> float:
    """Mean IoU over classes with a non-empty union (NaN classes excluded)."""
    return float(iou_from_confusion(conf).nanmean())


def pixel_acc_from_confusion(conf: Tensor) -> float:
    """Pixel accuracy = trace(C) / sum(C) over non-ignored pixels (NaN if there are none)."""
    total = conf.sum()
    return float(conf.diagonal().sum().double() / total) if total > 0 else float("nan")


def _legacy_from_per_image(per_image: Tensor) -> Tensor:
    conf = per_image.double()
    inter = conf.diagonal(dim1=1, dim2=2)  # (B,K)
    union = conf.sum(1) + conf.sum(2) - inter
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(inter))
    return iou.sum(1) / present.sum(1)  # NaN for an image with no valid pixel


def legacy_miou_per_image(pred_labels: Tensor, target: Tensor, num_classes: int,
                          ignore_index: int = -1) -> Tensor:
    """LEGACY per-image mIoU, the paper code's old MTAN formula (docs/method.md §7): (B,) float64.

    Per image, over valid pixels: IoU_j = I_j / U_j for each class with U_j > 0 (a class predicted
    but absent from the ground truth counts 0), mean over those classes. Averaging this over
    images gives values ~8% below the dataset-level mIoU; use it only to compare with the paper.
    NaN for an image without valid pixels.
    """
    pred = _as_labels(pred_labels, num_classes)
    return _legacy_from_per_image(_per_image_confusion(pred, target, num_classes, ignore_index,
                                                       pred_checked=pred_labels.is_floating_point()))



class SegmentationMeter(Meter):
    """Dataset-level mIoU and pixel accuracy from one confusion matrix, plus the legacy mIoU.

    ``confusion`` (K,K) int64, rows = ground truth, cols = prediction. ``compute()`` returns
    ``miou``, ``pixel_acc``, ``iou_per_class`` (NaN for a class absent from prediction and
    ground truth over the whole split, excluded from the mean) and ``miou_legacy``: LEGACY,
    the paper code's per-image mIoU averaged over images (see :func:`legacy_miou_per_image`).
    """

    _state_names = ("confusion", "legacy_sum", "legacy_count")

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        self.confusion = torch.zeros(k, k, dtype=torch.int64)
        self.legacy_sum = torch.zeros((), dtype=torch.float64)
        self.legacy_count = torch.zeros((), dtype=torch.int64)

    @torch.no_grad()
    def update(self, logits_or_labels: Tensor, target: Tensor) -> None:
        pred = _as_labels(logits_or_labels, self.num_classes)
        self._follow(target.device)
        per_image = _per_image_confusion(pred, target, self.num_classes, self.ignore_index,
                                         pred_checked=logits_or_labels.is_floating_point())
        self.confusion += per_image.sum(0)
        legacy = _legacy_from_per_image(per_image)
        ok = ~legacy.isnan()  # images without any valid pixel are skipped
        self.legacy_sum += legacy[ok].sum()
        self.legacy_count += ok.sum()

    def compute(self) -> dict:
        n = int(self.legacy_count)
        return {"miou": miou_from_confusion(self.confusion),
                "pixel_acc": pixel_acc_from_confusion(self.confusion),
                "iou_per_class": iou_from_confusion(self.confusion).tolist(),
                "miou_legacy": float(self.legacy_sum) / n if n else float("nan")}



# ----------------------------------------------------------------------------- the task
@TASKS.register("seg")
class Segmentation(Task):
    """K-class semantic segmentation (``loss.depth2seg_loss`` and ``loss.label_smoothing``
    shape every transfer into it)."""

    title = "semantic segmentation"
    batch_keys = ("seg_target",)
    augment = {"seg_target": "labels"}
    metrics = (Metric("miou", True, "fraction"), Metric("pixel_acc", True, "fraction"),
               Metric("miou_legacy", True, "fraction", delta_m=False))
    loss_term_unit = "cross-entropy (nats)"
    energy_unit = "KL (nats)"
    error_unit = "wrong (1) / right (0)"

    @classmethod
    def from_config(cls, config, num_classes: int, **context) -> "Segmentation":
        return cls(num_classes, kind=config.loss.depth2seg_loss,
                   label_smoothing=config.loss.label_smoothing)

    def channels(self) -> int:
        return self.num_classes

    def target(self, batch: dict) -> Tensor:
        return batch["seg_target"]

    def valid(self, batch: dict) -> Optional[Tensor]:
        return (batch["seg_target"] != IGNORE_INDEX)[:, None]

    def loss(self, prediction: Tensor, batch: dict) -> Tensor:
        return seg_loss(prediction, batch["seg_target"])

    def pseudo_target(self, prediction: Tensor) -> Tensor:
        return prediction.detach().max(dim=1).indices  # = argmax, faster on CPU

    def transfer_loss(self, transferred: Tensor, target: Tensor, batch: dict) -> Tensor:
        gt = batch.get("seg_target")
        if gt is not None:  # the ground-truth ignore mask applies to both versions
            target = torch.where(gt == IGNORE_INDEX, torch.full_like(target, IGNORE_INDEX),
                                 target)
        return depth2seg_loss(transferred, target, self.options.get("kind", "ce"),
                              self.options.get("label_smoothing", 0.0))

    def transfer_input(self, prediction: Tensor) -> Tensor:
        return F.log_softmax(prediction, dim=1)

    def meter(self) -> "SegmentationMeter":
        return SegmentationMeter(self.num_classes)

    def measure(self, meter: "SegmentationMeter", prediction: Tensor, batch: dict) -> None:
        meter.update(prediction, batch["seg_target"])

    def energy_map(self, direct: Tensor, transferred: Tensor) -> Tensor:
        """KL(softmax(direct) || softmax(transferred)) summed over the K classes (the
        authors' code divided it by K)."""
        if direct.shape != transferred.shape or direct.dim() != 4:
            raise ValueError(f"seg energy: direct {tuple(direct.shape)} and transferred "
                             f"{tuple(transferred.shape)} must both be (B,K,H,W)")
        log_p, log_q = F.log_softmax(direct.float(), 1), F.log_softmax(transferred.float(), 1)
        return (log_p.exp() * (log_p - log_q)).sum(1)

    def agreement(self, direct: Tensor, transferred: Tensor) -> Tensor:
        """(B,H,W) bool: the transferred labels equal the direct ones."""
        return transferred.max(1).indices == direct.max(1).indices

    def error_map(self, prediction: Tensor, batch: dict) -> Tensor:
        target = batch["seg_target"]
        return ((prediction.max(1).indices != target) & (target != IGNORE_INDEX)).float()

    def draw(self, value: Tensor, valid: Optional[Tensor] = None):
        labels = value.detach().cpu()
        labels = (labels.argmax(0) if labels.is_floating_point() else labels).numpy()
        palette = np.vstack([seg_palette(self.num_classes), np.zeros((1, 3), np.uint8)])
        return palette[np.where(labels < 0, self.num_classes, labels)] / 255.0
