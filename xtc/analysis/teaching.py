"""Small measurements the workshop notebooks (``notebooks/workshop/``) are built on: what a
transfer net makes of a segmentation you hand it, and where one loss term's gradient goes.

Examples:
    >>> import torch
    >>> painted = paint(torch.zeros(1, 4, 4, dtype=torch.long), (1, 3, 0, 2), 5)
    >>> painted[0, 1:3, 0:2].unique().tolist()
    [5]
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch.utils.data import default_collate

PARTS = ("encoder", "decoders.seg", "decoders.depth", "transfer.seg2depth",
         "transfer.depth2seg")  # the model's parts, as named in its state_dict


def batch_of(dataset, indices: Sequence[int]) -> dict:
    """The items ``indices`` of ``dataset`` stacked into one batch."""
    return default_collate([dataset[i] for i in indices])


def paint(labels: torch.Tensor, box: tuple[int, int, int, int], cls: int) -> torch.Tensor:
    """A copy of label maps (B,H,W) with the rows ``box[0]:box[1]`` and columns
    ``box[2]:box[3]`` set to class ``cls``: an edited segmentation to hand a transfer net."""
    edited = labels.clone()
    top, bottom, left, right = box
    edited[:, top:bottom, left:right] = cls
    return edited


@torch.no_grad()
def seg2depth_of_labels(model, labels: torch.Tensor, confidence: float = 0.8) -> torch.Tensor:
    """The depth (B,1,H,W) the model's ``seg2depth`` transfer net infers from label maps
    (B,H,W) alone. The labels are fed as logits whose softmax gives each pixel's class the
    probability ``confidence`` (0.8: about what a trained segmentation head outputs); the
    net was trained on such soft predictions, and a hard one-hot input lies far outside what
    it has seen (on the quickstart run, abs_err 0.83 at confidence ~1 against 0.04 at 0.8).
    Ignore pixels (-1) are fed as the first class."""
    import math

    model.eval()
    device = next(model.parameters()).device
    k = model.num_classes
    # softmax(scale * one_hot) = confidence
    scale = math.log(confidence * (k - 1) / (1 - confidence))
    one_hot = torch.nn.functional.one_hot(labels.clamp_min(0).to(device), k)
    return model.transfer["seg2depth"](scale * one_hot.permute(0, 3, 1, 2).float())


@torch.no_grad()
def depth2seg_of_depth(model, depth: torch.Tensor) -> torch.Tensor:
    """The label map (B,H,W) the model's ``depth2seg`` transfer net infers from depth
    (B,1,H,W) alone, e.g. the ground truth."""
    model.eval()
    return model.transfer["depth2seg"](depth.to(next(model.parameters()).device)).argmax(1)


def gradient_reach(model, criterion, batch: Mapping[str, torch.Tensor],
                   term: str) -> dict[str, float]:
    """The L2 norm of the gradient of one loss term (``seg``, ``depth``, ``seg2depth``,
    ``depth2seg``, ``total``; unweighted, as the criterion returns it) on each model part of
    :data:`PARTS`: 0.0 where the term's gradient does not reach. BatchNorm runs in eval mode
    so the measurement changes no running statistics."""
    model.eval()
    model.zero_grad(set_to_none=True)
    terms = criterion({k: v.float() for k, v in model(batch["image"]).items()}, batch)
    terms[term].backward()
    norms = {}
    for part in PARTS:
        grads = [p.grad for name, p in model.named_parameters()
                 if name.startswith(part + ".") and p.grad is not None]
        norms[part] = (float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
                       if grads else 0.0)
    model.zero_grad(set_to_none=True)
    return norms
