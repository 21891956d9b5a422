"""STL / MTL / XTC networks and ``build_model`` (docs/method.md §1-2).

One class, :class:`XTCNet`, covers every method: a shared encoder, one decoder per task and,
for ``xtc``, one task-transfer network per edge ``a2b`` of the transfer graph. The method
names are :data:`xtc.tasks.METHODS`; each task's channels and transfer-input encoding come
from the task registry.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from xtc.models.decoder import Decoder
from xtc.models.encoder import Encoder
from xtc.models.transfer import TaskTransferNet
from xtc.tasks import METHODS, TASKS, default_transfers, split_edge, transfers_of

# ImageNet statistics. Datasets deliver images in [0, 1] (good for display); the model
# normalises inside forward, for every dataset (fixes docs/method.md §11 defect 12).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class XTCNet(nn.Module):
    """Shared encoder + task decoders (+ transfer nets for ``xtc``).

    Args:
        method: one of ``METHODS.names()``.
        tasks: the tasks with a decoder (registry names), e.g. ("seg", "depth").
        num_classes: K, the number of segmentation classes.
        encoder: timm backbone name; pretrained: ImageNet weights (see :class:`Encoder`).
        decoder_width, transfer_width, transfer_batch_norm: see docs/method.md §2.2-2.3.
        transfers: the edges ``a2b`` to build transfer nets for (``xtc``).

    ``forward(images)`` takes (B, 3, H, W) images in [0, 1] with H, W divisible by 32 and
    returns a dict: ``<task>`` per task (``seg`` (B, K, H, W) logits, ``depth`` (B, 1, H, W)
    in the dataset's unit, unbounded; ``normal`` (B, 3, H, W), unnormalised) and for ``xtc``
    ``<a>2<b>`` per edge in b's shape. With ``direct_only=True`` the transfer nets are
    skipped (evaluation).
    """

    def __init__(self, method: str, tasks: Sequence[str], num_classes: int,
                 encoder: str = "resnet34", pretrained: bool = False, decoder_width: int = 128,
                 transfer_width: int = 64, transfer_batch_norm: bool = False,
                 transfers: Sequence[str] = (), transfer_detach_input: bool = False):
        super().__init__()
        if num_classes < 2 and "seg" in tasks:
            raise ValueError(f"num_classes={num_classes}: segmentation needs at least 2 classes")
        self.method = method
        self.tasks = tuple(tasks)
        self.num_classes = num_classes
        self.specs = {t: TASKS.get(t)(num_classes) for t in self.tasks}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.encoder = Encoder(encoder, pretrained=pretrained)
        self.decoders = nn.ModuleDict({t: Decoder(self.encoder.channels, spec.channels(),
                                                  decoder_width)
                                       for t, spec in self.specs.items()})
        self.transfer: nn.ModuleDict | None = None
        self.transfer_detach_input = transfer_detach_input
        self.edges = [(name, *split_edge(name)) for name in transfers]
        if self.edges:
            self.transfer = nn.ModuleDict({
                name: TaskTransferNet(self.specs[a].channels(), self.specs[b].channels(),
                                      transfer_width, transfer_batch_norm)
                for name, a, b in self.edges})

    def forward(self, images: torch.Tensor, direct_only: bool = False) -> dict[str, torch.Tensor]:
        _check_images(images)
        features = self.encoder((images - self.mean) / self.std)
        out = {task: decoder(features) for task, decoder in self.decoders.items()}
        if self.transfer is not None and not direct_only:
            # The transfer nets see only the direct predictions, with gradient: a cross-task
            # loss trains its source decoder (docs/method.md §3.2); the loss detaches targets.
            # transfer_detach_input is the control: the transfer nets still learn the mapping
            # but no cross-task gradient reaches the encoder or the source decoders.
            inputs = {}
            for name, source, _ in self.edges:
                if source not in inputs:
                    x = out[source].detach() if self.transfer_detach_input else out[source]
                    inputs[source] = self.specs[source].transfer_input(x)
                out[name] = self.transfer[name](inputs[source])
        return out

    def transfer_from(self, name: str, prediction: torch.Tensor) -> torch.Tensor:
        """Run transfer net ``name`` (``a2b``) on a prediction of task a, encoded as in
        training (segmentation logits through log_softmax, normals to unit length)."""
        source = split_edge(name)[0]
        return self.transfer[name](self.specs[source].transfer_input(prediction))

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


def build_model(method: str, num_classes: int, encoder: str = "resnet34",
                pretrained: bool = False, *, tasks: Sequence[str] = ("seg", "depth"),
                transfers: Optional[Sequence[str]] = None, decoder_width: int = 128,
                transfer_width: int = 64, transfer_batch_norm: bool = False,
                transfer_detach_input: bool = False) -> XTCNet:
    """Build the network for ``method`` over ``tasks`` (``stl-<task>`` has that one task;
    ``xtc`` gets transfer nets for ``transfers``, default every ordered pair of ``tasks``).

    Examples:
        >>> model = build_model("xtc", 7, "resnet18", decoder_width=16, transfer_width=8)
        >>> sorted(model(torch.rand(1, 3, 64, 64)))
        ['depth', 'depth2seg', 'seg', 'seg2depth']
    """
    spec = METHODS.get(method)
    built = spec.tasks_for(tasks)
    edges = (list(transfers) if transfers is not None else default_transfers(built)) \
        if spec.transfers else []
    return XTCNet(method, built, num_classes, encoder=encoder, pretrained=pretrained,
                  decoder_width=decoder_width, transfer_width=transfer_width,
                  transfer_batch_norm=transfer_batch_norm, transfers=edges,
                  transfer_detach_input=transfer_detach_input)


def build_model_from_config(cfg: Any, num_classes: int) -> XTCNet:
    """Build the model from a full :class:`xtc.config.Config` (uses ``cfg.model.*``)."""
    m = cfg.model
    return build_model(m.method, num_classes, m.encoder, m.pretrained, tasks=m.tasks,
                       transfers=transfers_of(cfg) or None, decoder_width=m.decoder_width,
                       transfer_width=m.transfer_width,
                       transfer_batch_norm=m.transfer_batch_norm,
                       transfer_detach_input=m.transfer_detach_input)
