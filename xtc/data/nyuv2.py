"""NYUv2 in the MTAN ``.npy`` layout (288x384, 13 classes, metric depth; see ``xtc.data.mtan``).

Depth is in metres with 0 = invalid; the depth mask is ``depth > 0`` in training too (the
authors' NYU loss was unmasked, docs/method.md §11 item 8). Surface normals are read from
``normal/`` when it exists and yielded as ``normal_target (3,H,W)`` (unit vectors) and
``normal_mask (1,H,W)`` (zero vectors in the files are invalid); the convention is the
files' own (x is the horizontal image axis, which the flip augmentation relies on).
"""

from __future__ import annotations

from xtc.data.mtan import MTANDataset

CLASSES_13 = ["bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture",
              "sofa", "table", "tv", "wall", "window"]


class NYUv2(MTANDataset):
    """MTAN NYUv2: ``label/`` with 13 classes, ``depth/`` in metres, optional ``normal/``."""

    name = "nyuv2"
    label_folder = "label"
    num_classes = 13
    class_names = CLASSES_13
    depth_units = "metres"
    depth_range = (0.0, 10.0)  # metres: the Kinect's range in the labelled release
    batch_keys = ("image", "seg_target", "depth_target", "depth_mask", "normal_target",
                  "normal_mask")  # normals when the root has normal/ folders
