"""STL / MTL / XTC networks and ``build_model`` (paper-spec §1-2, design.md "Methods").

One class, :class:`XTCNet`, covers every method: a shared encoder, one decoder per task and,
for ``xtc``, the two task-transfer networks. The method names are the ``METHODS`` registry.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xtc.models.decoder import Decoder
from xtc.models.encoder import Encoder
from xtc.models.transfer import TaskTransferNet
from xtc.registry import Registry

METHODS = Registry("method")

# ImageNet statistics. Datasets deliver images in [0, 1] (good for display); the model
# normalises inside forward, for every dataset (fixes paper-spec §11 defect 12).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class XTCNet(nn.Module):
    """Shared encoder + task decoders (+ transfer nets for ``xtc``).

    Args:
        method: one of ``METHODS.names()``.
        tasks: the tasks with a decoder, a subset of ("seg", "depth").
        num_classes: K, the number of segmentation classes.
        encoder: timm backbone name; pretrained: ImageNet weights (see :class:`Encoder`).
        decoder_width, transfer_width, transfer_batch_norm: see paper-spec §2.2-2.3.

    ``forward(images)`` takes (B, 3, H, W) images in [0, 1] with H, W divisible by 32 and
    returns a dict: ``seg`` (B, K, H, W logits), ``depth`` (B, 1, H, W; units of the dataset's
    depth target: metres for NYUv2, inverse depth for Cityscapes / synthetic city, unbounded),
    and for ``xtc`` ``seg2depth`` (B, 1, H, W) and ``depth2seg`` (B, K, H, W). With
    ``direct_only=True`` the transfer nets are skipped (evaluation).
    """

    def __init__(self, method: str, tasks: tuple[str, ...], num_classes: int,
                 encoder: str = "resnet34", pretrained: bool = False, decoder_width: int = 128,
                 transfer_width: int = 64, transfer_batch_norm: bool = False,
                 transfer: bool = False, transfer_detach_input: bool = False):
        super().__init__()
        if num_classes < 2 and "seg" in tasks:
            raise ValueError(f"num_classes={num_classes}: segmentation needs at least 2 classes")
        self.method = method
        self.tasks = tuple(tasks)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.encoder = Encoder(encoder, pretrained=pretrained)
        out = {"seg": num_classes, "depth": 1}
        self.decoders = nn.ModuleDict({t: Decoder(self.encoder.channels, out[t], decoder_width)
                                       for t in self.tasks})
        self.transfer: nn.ModuleDict | None = None
        self.transfer_detach_input = transfer_detach_input
        if transfer:
            self.transfer = nn.ModuleDict({
                "seg2depth": TaskTransferNet(num_classes, 1, transfer_width,
                                             transfer_batch_norm, log_softmax_input=True),
                "depth2seg": TaskTransferNet(1, num_classes, transfer_width,
                                             transfer_batch_norm, log_softmax_input=False),
            })

    def forward(self, images: torch.Tensor, direct_only: bool = False) -> dict[str, torch.Tensor]:
        _check_images(images)
        features = self.encoder((images - self.mean) / self.std)
        out = {task: decoder(features) for task, decoder in self.decoders.items()}
        if self.transfer is not None and not direct_only:
            # The transfer nets see only the direct predictions, with gradient: a cross-task
            # loss trains its source decoder (paper-spec §3.2). Targets are detached in the loss.
            # transfer_detach_input is the control: the transfer nets still learn the mapping
            # but no cross-task gradient reaches the encoder or the source decoders.
            seg, depth = out["seg"], out["depth"]
            if self.transfer_detach_input:
                seg, depth = seg.detach(), depth.detach()
            out["seg2depth"] = self.transfer["seg2depth"](seg)
            out["depth2seg"] = self.transfer["depth2seg"](depth)
        return out

    def last_shared_layer(self) -> nn.Parameter:
        """The last conv weight of the shared encoder (GradNorm's W)."""
        return self.encoder.last_shared_layer()


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"model expects images of shape (B, 3, H, W); got {shape}")
    h, w = images.shape[-2:]
    if h % 32 or w % 32:
        raise ValueError(f"image height and width must be divisible by 32 (the encoder "
                         f"downsamples five times); got H={h}, W={w}. Resize or crop, e.g. "
                         f"to {max(32, h // 32 * 32)}x{max(32, w // 32 * 32)}")


@METHODS.register("stl-seg")
def _stl_seg(num_classes: int, **kw: Any) -> XTCNet:
    return XTCNet("stl-seg", ("seg",), num_classes, **kw)


@METHODS.register("stl-depth")
def _stl_depth(num_classes: int, **kw: Any) -> XTCNet:
    return XTCNet("stl-depth", ("depth",), num_classes, **kw)


@METHODS.register("mtl")
def _mtl(num_classes: int, **kw: Any) -> XTCNet:
    return XTCNet("mtl", ("seg", "depth"), num_classes, **kw)


@METHODS.register("xtc")
def _xtc(num_classes: int, **kw: Any) -> XTCNet:
    return XTCNet("xtc", ("seg", "depth"), num_classes, transfer=True, **kw)


def build_model(method: str, num_classes: int, encoder: str = "resnet34",
                pretrained: bool = False, *, decoder_width: int = 128, transfer_width: int = 64,
                transfer_batch_norm: bool = False, transfer_detach_input: bool = False) -> XTCNet:
    """Build the network for ``method`` (``stl-seg | stl-depth | mtl | xtc``).

    Examples:
        >>> model = build_model("xtc", 7, "resnet18", decoder_width=16, transfer_width=8)
        >>> sorted(model(torch.rand(1, 3, 64, 64)))
        ['depth', 'depth2seg', 'seg', 'seg2depth']
    """
    return METHODS.get(method)(num_classes, encoder=encoder, pretrained=pretrained,
                               decoder_width=decoder_width, transfer_width=transfer_width,
                               transfer_batch_norm=transfer_batch_norm,
                               transfer_detach_input=transfer_detach_input)


def build_model_from_config(cfg: Any, num_classes: int) -> XTCNet:
    """Build the model from a full :class:`xtc.config.Config` (uses ``cfg.model.*``)."""
    m = cfg.model
    return build_model(m.method, num_classes, m.encoder, m.pretrained,
                       decoder_width=m.decoder_width, transfer_width=m.transfer_width,
                       transfer_batch_norm=m.transfer_batch_norm,
                       transfer_detach_input=m.transfer_detach_input)
