"""Cityscapes in the MTAN ``.npy`` layout (128x256, see ``xtc.data.mtan``).

``label_7`` holds the 7 categories (flat, construction, object, nature, sky, human, vehicle),
``label_19`` the standard 19 trainIds; ``classes`` picks the folder. Depth is inverse depth:
disparity in pixels / 256, about 0..0.4922 (``xtc.data.prepare.prepare_cityscapes``), 0 = invalid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from xtc.data.errors import DatasetError
from xtc.data.mtan import MTANDataset

CLASSES_7 = ["flat", "construction", "object", "nature", "sky", "human", "vehicle"]
CLASSES_19 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
              "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
              "bus", "train", "motorcycle", "bicycle"]


class Cityscapes(MTANDataset):
    """MTAN Cityscapes: ``classes=7`` reads ``label_7/``, ``classes=19`` reads ``label_19/``."""

    name = "cityscapes"
    depth_units = "inverse depth"

    def __init__(self, split: str, root: Union[str, Path, None] = None, *, classes: int = 7,
                 val_fraction: float = 0.1, augment: Optional[bool] = None, seed: int = 0,
                 split_seed: Optional[int] = None):
        if classes not in (7, 19):
            raise DatasetError(f"cityscapes classes={classes}: use 7 (label_7) or 19 (label_19); "
                               f"set data.classes=7 or 19")
        self.label_folder = f"label_{classes}"
        self.num_classes = classes
        self.class_names = list(CLASSES_7 if classes == 7 else CLASSES_19)
        super().__init__(split, root, val_fraction=val_fraction, augment=augment, seed=seed,
                         split_seed=split_seed)
