"""Shared encoder: a timm ``features_only`` backbone with five feature levels.

docs/method.md §2.1: the authors used a torchvision ResNet with five taps at strides
(2, 4, 8, 16, 32). timm's ``features_only`` ResNets expose exactly those taps (act1, layer1..4),
so any timm backbone with the same reductions works. Unlike the authors' code (docs/method.md §11,
defect 20) a failed pretrained download is an error, never a silent untrained fallback.
"""

from __future__ import annotations

import torch
from torch import nn

from xtc.errors import ConfigError, SetupError

REDUCTIONS = (2, 4, 8, 16, 32)


class Encoder(nn.Module):
    """timm backbone returning five feature maps ``enc0..enc4``.

    Args:
        name: a timm model name (``resnet18``, ``resnet34``, ``resnet50``, ...).
        pretrained: load ImageNet weights (must be downloadable or in the HF cache).

    Shapes: input (B, 3, H, W) normalised image; output list of five tensors
    (B, C_i, H / r_i, W / r_i) with ``r = (2, 4, 8, 16, 32)`` and ``C_i = self.channels[i]``.

    Examples:
        >>> enc = Encoder("resnet18")
        >>> enc.channels
        (64, 64, 128, 256, 512)
    """

    def __init__(self, name: str = "resnet34", pretrained: bool = False):
        super().__init__()
        import timm  # heavy import stays out of `import xtc`

        if not timm.is_model(name):
            raise ConfigError(f"unknown encoder '{name}': not a timm model name; use e.g. "
                              f"resnet18, resnet34 or resnet50 (see timm.list_models())")
        self.name = name
        self.backbone = _create(timm, name, pretrained)
        reductions = tuple(self.backbone.feature_info.reduction())
        if reductions != REDUCTIONS:
            raise ConfigError(f"encoder '{name}' gives feature levels with reductions "
                              f"{reductions}; xtc needs exactly five levels with reductions "
                              f"{REDUCTIONS} (e.g. resnet18/34/50)")
        self.channels: tuple[int, ...] = tuple(self.backbone.feature_info.channels())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.backbone(x))

    def last_shared_layer(self) -> nn.Parameter:
        """Weight of the last convolution of the encoder (GradNorm's W; docs/method.md §3.4).

        For ResNet-18/34 this is ``layer4[-1].conv2``, the layer the authors used.
        """
        last = None
        for module in self.backbone.modules():
            if isinstance(module, nn.Conv2d):
                last = module
        assert last is not None, "encoder has no Conv2d"
        return last.weight


def _create(timm, name: str, pretrained: bool) -> nn.Module:
    if not pretrained:
        # timm zero-initialises the last BN gamma of every residual block, which leaves the
        # block's inner convs with exactly zero gradient at step 0; the authors' torchvision
        # ResNet (trained from scratch by default) does not, so switch it off where supported.
        try:
            return timm.create_model(name, features_only=True, pretrained=False,
                                     zero_init_last=False)
        except TypeError:  # a backbone family without that option
            return timm.create_model(name, features_only=True, pretrained=False)
    try:
        return timm.create_model(name, features_only=True, pretrained=True)
    except Exception as exc:  # offline: huggingface_hub / urllib raise various OSErrors
        raise SetupError(
            f"pretrained ImageNet weights for encoder '{name}' could not be downloaded or found "
            f"in the local cache ({type(exc).__name__}: {exc}). Pre-cache them on a machine with "
            f"internet (python -c \"import timm; timm.create_model('{name}', pretrained=True)\", "
            f"which fills the Hugging Face cache, ~/.cache/huggingface or $HF_HOME) and copy the "
            f"cache here, or train from scratch with model.pretrained=false."
        ) from exc
