"""Models: shared timm encoder, U-Net decoders, task-transfer nets, and ``build_model``.

Examples:
    >>> from xtc.models import build_model, METHODS
    >>> METHODS.names()
    ['mtl', 'stl-depth', 'stl-normal', 'stl-seg', 'xtc']
"""

from xtc.models.decoder import ConvBlock, Decoder
from xtc.models.encoder import Encoder
# METHODS: xtc.tasks
from xtc.models.net import METHODS, XTCNet, build_model, build_model_from_config
from xtc.models.transfer import TaskTransferNet

__all__ = ["METHODS", "ConvBlock", "Decoder", "Encoder", "TaskTransferNet", "XTCNet",
           "build_model", "build_model_from_config"]
