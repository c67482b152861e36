"""Writes PASCAL3D+ annotations in the public release format (a ``record`` struct in a .mat)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

VIEW_FIELDS = ("azimuth", "elevation", "theta", "distance", "focal", "px", "py", "viewport")
OBJECT_FIELDS = ("class", "bbox", "viewpoint", "anchors", "truncated", "occluded", "difficult",
                 "cad_index")


def _anchor(xy, status: int):
    a = np.zeros((1, 1), dtype=[("location", "O"), ("status", "O")])
    a[0, 0]["location"] = np.zeros((0, 0)) if xy is None else np.array([list(map(float, xy))])
    a[0, 0]["status"] = np.array([[status]])
    return a


def pascal3d_object(bbox, anchors: dict, category: str = "car", view: dict | None = None,
                    occluded: int = 0, cad_index: int = 1):
    """One entry of ``record.objects``: ``bbox`` 1-based [x1 y1 x2 y2]; ``anchors`` name →
    ``(x, y)`` 1-based (status 1, visible) or None (empty location, status 5)."""
    an = np.zeros((1, 1), dtype=[(n, "O") for n in anchors])
    for n, xy in anchors.items():
        an[0, 0][n] = _anchor(xy, 1 if xy is not None else 5)
    vp = np.zeros((1, 1), dtype=[(n, "O") for n in VIEW_FIELDS])
    for n, v in {**dict(azimuth=30.0, elevation=10.0, theta=0.0, distance=5.0, focal=1.0, px=1.0,
                        py=1.0, viewport=2000.0), **(view or {})}.items():
        vp[0, 0][n] = np.array([[float(v)]])
    o = np.zeros((1, 1), dtype=[(n, "O") for n in OBJECT_FIELDS])[0, 0]
    o["class"] = np.array([category])
    o["bbox"] = np.array([list(map(float, bbox))])
    o["viewpoint"] = vp
    o["anchors"] = an
    o["truncated"], o["occluded"], o["difficult"] = (np.array([[0]]), np.array([[occluded]]),
                                                     np.array([[0]]))
    o["cad_index"] = np.array([[cad_index]])
    return o


def write_pascal3d(root, subset: str, image_name: str, objects: list) -> Path:
    """``Annotations/<subset>/<stem>.mat`` for the image ``Images/<subset>/<image_name>`` (the
    image itself is the caller's); ``subset`` e.g. ``car_imagenet``. Returns the .mat path."""
    objs = np.zeros((1, len(objects)), dtype=[(n, "O") for n in OBJECT_FIELDS])
    for k, o in enumerate(objects):
        objs[0, k] = o
    rec = np.zeros((1, 1), dtype=[("filename", "O"), ("objects", "O")])
    rec[0, 0]["filename"] = np.array([image_name])
    rec[0, 0]["objects"] = objs
    ann = Path(root) / "Annotations" / subset
    ann.mkdir(parents=True, exist_ok=True)
    path = ann / (Path(image_name).stem + ".mat")
    scipy.io.savemat(path, {"record": rec})
    return path
