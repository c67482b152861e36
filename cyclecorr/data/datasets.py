"""Loaders of real-image datasets, each returning :class:`~cyclecorr.data.samples.Sample` items
(images, **0-based** keypoints with visibility, masks where present, the source file).
(Over 600 lines: seven short loaders, one per dataset layout, that share these conventions.)

All loaders are lazy sequences (``len(ds)``, ``ds[i]``, iteration): they list the files at
construction (raising a clear error for a missing or empty folder) and read one item per access
(raising :class:`~cyclecorr.data.io.DataError` naming the file for corrupt content).

==========================  ===================================================================
loader                      layout
==========================  ===================================================================
:class:`PFWillow`           ``<root>/<class>/<name>.png`` + ``<name>.mat`` (``pts_coord`` 2×N,
                            row 0 = x, row 1 = y, **1-based** → we subtract 1)
:class:`FlowWebCars`        ``<root>/NNN.jpg`` + ``NNN.mat`` (``mask``, ``parts`` struct array
                            with ``part_name``/``mask``, ``keypts`` 2×12 x;y **1-based** → −1,
                            ``keypts_status`` 1×12, 1 = annotated)
:class:`TSSPairs`           ``<root>/<group>/<pair>/image1.png, image2.png, flow1.flo, flow2.flo,
                            mask1.png, mask2.png[, flip_gt.txt]``
:class:`ImageFolder`        any folder of images; with a ``boxes.tsv`` (``real/voc2007`` format:
                            VOC 1-based box in the original image + the 0-based crop window)
                            each item gets its object ``bbox`` in the crop and VOC flags/pose;
                            ``models.tsv`` / ``images.tsv`` (``real/stanford-cars``) labels
:class:`VOCDetection`       ``<root>/Annotations/*.xml`` + ``<root>/JPEGImages/`` (+ optional
                            ``ImageSets/Main/<split>.txt``): one item per object (VOC boxes are
                            1-based → −1)
:class:`Pascal3D`           ``<root>/Annotations/<cls>_<src>/*.mat`` (``record`` struct with
                            ``objects``: ``class``, ``bbox`` 1-based, ``viewpoint``, ``anchors``
                            with ``location`` 1-based and ``status``) + ``<root>/Images/…``
:func:`list_shapenet`       ``<root>/<synset>/<id>/models/model_normalized.obj`` (v2) or
                            ``<root>/<id>/model_normalized.obj`` or ``<root>/<id>/model.obj`` (v1)
==========================  ===================================================================
"""
from __future__ import annotations

import csv
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from cyclecorr.data.io import IMAGE_SUFFIXES, DataError, load_mat, read_flo, read_image, read_mask
from cyclecorr.data.samples import PairSample, Sample
from cyclecorr.render.camera import Viewpoint

__all__ = ["PFWillow", "FlowWebCars", "TSSPairs", "ImageFolder", "VOCDetection", "Pascal3D",
           "list_shapenet", "list_images", "PASCAL3D_KEYPOINTS", "SHAPENET_SYNSETS"]


def _require_dir(root, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: {what} folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: {what} path is not a folder")
    return root


def list_images(folder) -> list[Path]:
    """Sorted image files (by suffix) directly inside ``folder``; raises when there are none."""
    folder = _require_dir(folder, "image")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: empty folder (no image files {IMAGE_SUFFIXES})")
    return files


class _Seq:
    """Lazy sequence base: subclasses fill ``self.items`` and implement ``_load(item)``."""

    items: list

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {type(self).__name__} of {len(self)}")
        return self._load(self.items[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def _load(self, item):  # pragma: no cover - abstract
        raise NotImplementedError


def _matlab_points(arr, path: Path, n: int | None = None, name: str = "keypoints") -> np.ndarray:
    """A 2×N MATLAB array (row 0 = x, row 1 = y, 1-based) → (N, 2) float64, 0-based."""
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != 2 or (n is not None and a.shape[1] != n):
        want = f"2×{n}" if n is not None else "2×N"
        raise DataError(f"{path}: {name} must be {want} (row 0 = x, row 1 = y), got {a.shape}")
    return a.T - 1.0


# --------------------------------------------------------------------------------------------
class PFWillow(_Seq):
    """PF-WILLOW (Ham et al., CVPR 2016): ``<root>/<class>/<name>.{png,jpg}`` + ``<name>.mat``.

    ``pts_coord`` (2×10, row 0 = x, row 1 = y) is stored **1-based** (MATLAB); keypoints are
    returned 0-based (1 subtracted here, once). All keypoints are visible; keypoint ``k`` is the
    same part across a class; names are not given (``keypoint_names`` is None). ``meta["class"]``
    holds the class folder name.

    Args:
        root: the ``pf-willow`` folder.
        classes: class folder names to keep (default: all sub-folders, sorted).
    """

    def __init__(self, root, classes=None):
        self.root = _require_dir(root, "PF-WILLOW")
        avail = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if classes is None:
            classes = avail
        unknown = [c for c in classes if c not in avail]
        if unknown:
            raise DataError(f"{self.root}: unknown PF-WILLOW class(es) {unknown} (have {avail})")
        self.classes = list(classes)
        self.items = []
        for c in self.classes:
            for mat in sorted((self.root / c).glob("*.mat")):
                img = next((mat.with_suffix(s) for s in (".png", ".jpg", ".jpeg")
                            if mat.with_suffix(s).exists()), None)
                if img is None:
                    raise DataError(f"{mat}: no image beside the annotation (.png/.jpg)")
                self.items.append((c, img, mat))
        if not self.items:
            raise DataError(f"{self.root}: empty folder (no <class>/*.mat annotations)")

    def _load(self, item) -> Sample:
        cls, img_path, mat_path = item
        image = read_image(img_path)
        kps = _matlab_points(load_mat(mat_path, ("pts_coord",))["pts_coord"], mat_path,
                             name="pts_coord")
        if not np.isfinite(kps).all():
            raise DataError(f"{mat_path}: pts_coord contains NaN/inf")
        return Sample(image=image, keypoints=kps, visible=np.ones(len(kps), bool),
                      path=img_path, meta={"class": cls, "annotation": mat_path})

    def pairs(self, cls: str) -> list[tuple[int, int]]:
        """All ordered pairs ``(i, j)``, ``i ≠ j``, of item indices within class ``cls``."""
        idx = [i for i, it in enumerate(self.items) if it[0] == cls]
        if not idx:
            raise KeyError(f"no PF-WILLOW class {cls!r} (have {self.classes})")
        return [(i, j) for i in idx for j in idx if i != j]


# --------------------------------------------------------------------------------------------
class FlowWebCars(_Seq):
    """FlowWeb / PASCAL car crops (Zhou et al., CVPR 2015): ``NNN.jpg`` + ``NNN.mat``.

    ``keypts`` (2×12, x;y) is stored **1-based** (MATLAB); returned 0-based (1 subtracted here).
    ``keypts_status`` 1 = annotated → ``visible``; the others get NaN coordinates. ``mask`` →
    ``mask`` (bool); ``parts`` struct array → ``parts`` dict (``part_name`` → bool mask; masks
    sharing a name are OR-ed). Keypoint names are not stored in the files (``keypoint_names``
    is None); the object box is the mask's extent.
    """

    NUM_KEYPOINTS = 12

    def __init__(self, root):
        self.root = _require_dir(root, "FlowWeb")
        self.items = []
        for mat in sorted(self.root.glob("*.mat")):
            img = next((mat.with_suffix(s) for s in (".jpg", ".png", ".jpeg")
                        if mat.with_suffix(s).exists()), None)
            if img is None:
                raise DataError(f"{mat}: no image beside the annotation (.jpg/.png)")
            self.items.append((img, mat))
        if not self.items:
            raise DataError(f"{self.root}: empty folder (no NNN.mat annotations)")

    def _load(self, item) -> Sample:
        img_path, mat_path = item
        image = read_image(img_path)
        h, w = image.shape[:2]
        m = load_mat(mat_path, ("mask", "keypts", "keypts_status"))
        kps = _matlab_points(m["keypts"], mat_path, name="keypts")
        status = np.asarray(m["keypts_status"]).reshape(-1)
        if status.shape[0] != kps.shape[0]:
            raise DataError(f"{mat_path}: keypts_status has {status.shape[0]} entries for "
                            f"{kps.shape[0]} keypoints")
        vis = (status == 1) & np.isfinite(kps).all(axis=1)
        kps[~vis] = np.nan
        mask = np.asarray(m["mask"])
        if mask.shape != (h, w):
            raise DataError(f"{mat_path}: mask is {mask.shape}, image {img_path.name} is {h}×{w}")
        parts: dict[str, np.ndarray] = {}
        if "parts" in m and m["parts"].size:
            p = m["parts"]
            if p.dtype.names is None or not {"part_name", "mask"} <= set(p.dtype.names):
                raise DataError(f"{mat_path}: 'parts' must be a struct array with part_name "
                                "and mask")
            for rec in p.reshape(-1):
                name = str(np.asarray(rec["part_name"]).reshape(-1)[0])
                pm = np.asarray(rec["mask"]).astype(bool)
                if pm.shape != (h, w):
                    raise DataError(f"{mat_path}: part {name!r} mask is {pm.shape}, image is "
                                    f"{h}×{w}")
                parts[name] = parts[name] | pm if name in parts else pm
        return Sample(image=image, keypoints=kps, visible=vis, mask=mask.astype(bool), parts=parts,
                      path=img_path, meta={"annotation": mat_path})


# --------------------------------------------------------------------------------------------
class TSSPairs(_Seq):
    """TSS (Taniai et al., CVPR 2016) pairs: every folder under ``root`` holding ``image1.png``.

    Returns :class:`PairSample`: ``flow_ab`` = ``flow1.flo`` (image1 → image2) and
    ``flow_ba`` = ``flow2.flo``, each ``(2, H, W)`` float32 (channel 0 = x), unknown (1e10 in the
    file) = NaN; ``mask_a/b`` from ``mask1/2.png`` (0/255 → bool); ``meta["flip"]`` is the
    integer in ``flip_gt.txt`` (TSS: 1 when the pair's ground truth involves a mirrored view),
    ``meta["group"]`` the dataset group (FG3DCar, JODS, PASCAL).
    """

    def __init__(self, root):
        self.root = _require_dir(root, "TSS")
        self.items = sorted({p.parent for p in self.root.rglob("image1.png")})
        if not self.items:
            raise DataError(f"{self.root}: empty folder (no */image1.png pair folders)")

    def _load(self, d: Path) -> PairSample:
        files = {k: d / k for k in ("image1.png", "image2.png", "flow1.flo", "flow2.flo")}
        for f in files.values():
            if not f.exists():
                raise DataError(f"{f}: missing from TSS pair folder {d}")
        a, b = read_image(files["image1.png"]), read_image(files["image2.png"])
        fab, fba = read_flo(files["flow1.flo"]), read_flo(files["flow2.flo"])
        if fab.shape[1:] != a.shape[:2]:
            raise DataError(f"{files['flow1.flo']}: flow is {fab.shape[1:]}, image1 is "
                            f"{a.shape[:2]}")
        if fba.shape[1:] != b.shape[:2]:
            raise DataError(f"{files['flow2.flo']}: flow is {fba.shape[1:]}, image2 is "
                            f"{b.shape[:2]}")
        ma = read_mask(d / "mask1.png") if (d / "mask1.png").exists() else None
        mb = read_mask(d / "mask2.png") if (d / "mask2.png").exists() else None
        meta = {"group": d.parent.name, "name": d.name}
        fg = d / "flip_gt.txt"
        if fg.exists():
            txt = fg.read_text().strip()
            try:
                meta["flip"] = int(txt.split()[0]) if txt else 0
            except ValueError as e:
                raise DataError(f"{fg}: expected an integer, got {txt[:40]!r}") from e
        return PairSample(image_a=a, image_b=b, flow_ab=fab, flow_ba=fba, mask_a=ma, mask_b=mb,
                          paths=(files["image1.png"], files["image2.png"]), meta=meta)


# --------------------------------------------------------------------------------------------
_BOX_COLS = ("crop", "xmin", "ymin", "xmax", "ymax", "crop_x0", "crop_y0")


class ImageFolder(_Seq):
    """A folder of (unlabelled) real crops, e.g. ``real/voc2007/car`` or ``real/ikea-chair``.

    Without ``boxes.tsv`` every image is an item with ``bbox = None`` (the crop then uses the
    whole image). With a ``boxes.tsv`` (columns ``crop, xmin, ymin, xmax, ymax`` = the VOC box in
    the original photo, **1-based inclusive**; ``crop_x0, crop_y0`` = the crop window's 0-based
    top-left in that photo; optional ``truncated, difficult, pose, image_id, subset``) only the
    listed files are items, and each gets ``bbox = (xmin − 1 − crop_x0, ymin − 1 − crop_y0,
    xmax − 1 − crop_x0, ymax − 1 − crop_y0)`` (0-based inclusive, in the crop) and
    ``meta["pose"]`` (VOC coarse tag, '' / 'Unspecified' when unknown), ``meta["truncated"]``,
    ``meta["difficult"]`` (None where 'NA'). A ``models.tsv`` (columns ``image``, then one
    label column, e.g. ``real/ikea-chair``'s IKEA model names) adds ``meta["model"]``; so does an
    ``images.tsv`` with ``file`` and ``class_label`` columns (``real/stanford-cars``: the
    make/model/year class, and ``meta["class_id"]``).

    Crops: :func:`~cyclecorr.data.samples.crop_sample` crops an item to its ``bbox`` when it has
    one, else to the whole image. Both shared car layouts thus give a **tight** crop of the car:
    the VOC crops were saved with the box enlarged ×1.1, and their ``boxes.tsv`` box takes the
    margin off again; the Stanford Cars photos were saved cropped to the car's box with no
    margin, so the whole image is the box.
    """

    def __init__(self, root):
        self.root = _require_dir(root, "image")
        tsv = self.root / "boxes.tsv"
        self.labels = _read_labels_tsv(self.root / "models.tsv")
        self.class_ids: dict[str, int] = {}
        if not self.labels and (self.root / "images.tsv").exists():
            self.labels, self.class_ids = _read_images_tsv(self.root / "images.tsv")
        self.boxes: dict[str, dict] = {}
        if tsv.exists():
            self.boxes = _read_boxes_tsv(tsv)
            self.items = []
            for name in self.boxes:
                p = self.root / name
                if not p.exists():
                    raise DataError(f"{tsv}: lists {name!r}, which is not in {self.root}")
                self.items.append(p)
            if not self.items:
                raise DataError(f"{tsv}: no rows")
        else:
            self.items = list_images(self.root)

    def _load(self, path: Path) -> Sample:
        image = read_image(path)
        row = self.boxes.get(path.name)
        bbox, meta = None, {}
        if row is not None:
            bbox = row["bbox"]
            meta = {k: v for k, v in row.items() if k != "bbox"}
            h, w = image.shape[:2]
            x0, y0, x1, y1 = bbox
            bbox = (max(0, x0), max(0, y0), min(w - 1, x1), min(h - 1, y1))
        if path.name in self.labels:
            meta["model"] = self.labels[path.name]
        if path.name in self.class_ids:
            meta["class_id"] = self.class_ids[path.name]
        return Sample(image=image, bbox=bbox, path=path, meta=meta)

    def pose(self, i: int) -> str:
        """The VOC coarse pose tag of item ``i`` without reading the image ('' when unknown)."""
        row = self.boxes.get(self.items[i].name)
        p = (row or {}).get("pose", "") or ""
        return "" if p in ("Unspecified", "NA") else p


def _read_labels_tsv(tsv: Path) -> dict[str, str]:
    """``image<TAB>label`` rows (with a header line) → {image: label}; {} when absent."""
    if not tsv.exists():
        return {}
    out = {}
    lines = tsv.read_text().splitlines()
    for ln, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DataError(f"{tsv}:{ln}: expected 'image<TAB>label', got {line[:60]!r}")
        out[parts[0]] = parts[1]
    return out


def _read_images_tsv(tsv: Path) -> tuple[dict[str, str], dict[str, int]]:
    """``images.tsv`` with ``file`` and ``class_label`` (optional ``class_id``) columns →
    ({file: label}, {file: class id}); ({}, {}) when it has no ``class_label`` column."""
    with open(tsv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        cols = reader.fieldnames or []
        if "file" not in cols or "class_label" not in cols:
            return {}, {}
        labels, ids = {}, {}
        for ln, r in enumerate(reader, start=2):
            name = (r.get("file") or "").strip()
            if not name:
                raise DataError(f"{tsv}:{ln}: empty 'file'")
            labels[name] = (r.get("class_label") or "").strip()
            cid = (r.get("class_id") or "").strip()
            if cid:
                try:
                    ids[name] = int(cid)
                except ValueError:
                    raise DataError(f"{tsv}:{ln}: class_id must be an integer, "
                                    f"got {cid!r}") from None
    return labels, ids


def _flag(v: str):
    v = (v or "").strip()
    return None if v in ("", "NA") else int(v)


def _read_boxes_tsv(tsv: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with open(tsv, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in _BOX_COLS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{tsv}: missing column(s) {missing} (have {reader.fieldnames})")
        for ln, r in enumerate(reader, start=2):
            try:
                xmin, ymin, xmax, ymax = (float(r[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
                cx, cy = float(r["crop_x0"]), float(r["crop_y0"])
                out[r["crop"]] = {
                    "bbox": (xmin - 1 - cx, ymin - 1 - cy, xmax - 1 - cx, ymax - 1 - cy),
                    "pose": (r.get("pose") or "").strip(),
                    "truncated": _flag(r.get("truncated")),
                    "difficult": _flag(r.get("difficult")),
                    "image_id": r.get("image_id"),
                    "subset": r.get("subset"),
                }
            except (TypeError, ValueError) as e:
                raise DataError(f"{tsv}:{ln}: malformed row ({e})") from e
    return out


# --------------------------------------------------------------------------------------------
class VOCDetection(_Seq):
    """PASCAL VOC layout: ``Annotations/*.xml`` + ``JPEGImages/``; one item per object.

    Each item is the **full photograph** with ``bbox`` = the object's VOC box converted from
    1-based to 0-based inclusive indices; ``meta`` has ``class``, ``truncated``, ``difficult``,
    ``occluded``, ``pose`` and ``object_index``. Use :func:`crop_sample` to get the 128×128 crop.

    Args:
        root: the ``VOCdevkit/VOC2007``-like folder.
        category: object class to keep (``None`` = all).
        split: read ``ImageSets/Main/<split>.txt`` to restrict the images (``None`` = all XML).
        skip_truncated, skip_difficult: drop flagged objects.
        min_size: drop boxes whose shorter side is below this many pixels.
    """

    def __init__(self, root, category: str | None = "car", split: str | None = None,
                 skip_truncated: bool = False, skip_difficult: bool = True, min_size: int = 0):
        self.root = _require_dir(root, "VOC")
        ann = _require_dir(self.root / "Annotations", "VOC Annotations")
        if split is not None:
            lst = self.root / "ImageSets" / "Main" / f"{split}.txt"
            if not lst.exists():
                raise FileNotFoundError(f"{lst}: VOC split list not found")
            ids = [ln.split()[0] for ln in lst.read_text().splitlines() if ln.strip()]
            xmls = [ann / f"{i}.xml" for i in ids]
        else:
            xmls = sorted(ann.glob("*.xml"))
        if not xmls:
            raise DataError(f"{ann}: empty folder (no *.xml annotations)")
        self.items = []
        for x in xmls:
            for k, obj in enumerate(_parse_voc_xml(x)):
                if category is not None and obj["class"] != category:
                    continue
                if skip_truncated and obj["truncated"]:
                    continue
                if skip_difficult and obj["difficult"]:
                    continue
                x0, y0, x1, y1 = obj["bbox"]
                if min(x1 - x0 + 1, y1 - y0 + 1) < min_size:
                    continue
                self.items.append((x, k, obj))

    def _load(self, item) -> Sample:
        xml, k, obj = item
        img = self.root / "JPEGImages" / obj["filename"]
        image = read_image(img)
        meta = {key: obj[key] for key in ("class", "truncated", "difficult", "occluded", "pose")}
        meta.update(object_index=k, annotation=xml)
        return Sample(image=image, bbox=obj["bbox"], path=img, meta=meta)


def _parse_voc_xml(path: Path) -> list[dict]:
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: malformed VOC XML ({e})") from e
    fn = root.findtext("filename")
    if not fn:
        raise DataError(f"{path}: VOC XML has no <filename>")
    out = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        try:
            box = tuple(float(bb.findtext(t)) - 1.0 for t in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError) as e:
            raise DataError(f"{path}: object without a valid <bndbox> ({e})") from e
        out.append({
            "filename": fn.strip(),
            "class": (obj.findtext("name") or "").strip(),
            "bbox": box,
            "truncated": int(obj.findtext("truncated") or 0),
            "difficult": int(obj.findtext("difficult") or 0),
            "occluded": int(obj.findtext("occluded") or 0),
            "pose": (obj.findtext("pose") or "").strip(),
        })
    return out


# --------------------------------------------------------------------------------------------
#: PASCAL3D+ keypoint names per category (the ``anchors`` fields of the annotations).
PASCAL3D_KEYPOINTS = {
    "car": ["left_front_wheel", "left_back_wheel", "right_front_wheel", "right_back_wheel",
            "upper_left_windshield", "upper_right_windshield", "upper_left_rearwindow",
            "upper_right_rearwindow", "left_front_light", "right_front_light",
            "left_back_trunk", "right_back_trunk"],
    "chair": ["back_upper_left", "back_upper_right", "seat_upper_left", "seat_upper_right",
              "seat_lower_left", "seat_lower_right", "leg_upper_left", "leg_upper_right",
              "leg_lower_left", "leg_lower_right"],
    "aeroplane": ["left_wing", "right_wing", "rudder_upper", "noselanding", "left_elevator",
                  "rudder_lower", "right_elevator", "tail"],
}


def _field(rec, name):
    """Field of a scipy struct (record array element), squeezed; None if absent."""
    names = rec.dtype.names or ()
    if name not in names:
        return None
    v = rec[name]
    while isinstance(v, np.ndarray) and v.dtype == object and v.size == 1:
        v = v.reshape(-1)[0]
    return v


def _str(v) -> str:
    a = np.asarray(v).reshape(-1) if v is not None else np.zeros(0)
    return str(a[0]) if a.size else ""


def _scalar(v, default=None):
    if v is None:
        return default
    a = np.asarray(v).reshape(-1)
    if a.size == 0:
        return default
    try:
        return float(a[0])
    except (TypeError, ValueError):
        return default


class Pascal3D(_Seq):
    """The public PASCAL3D+ layout: ``Annotations/<cls>_<source>/*.mat`` +
    ``Images/<cls>_<source>/``.

    Each ``.mat`` holds ``record`` with ``filename`` and ``objects`` (struct array with ``class``,
    ``bbox`` [x1 y1 x2 y2] **1-based**, ``truncated``, ``occluded``, ``difficult``,
    ``viewpoint`` (``azimuth``, ``elevation``, ``theta``, ``distance``, ``focal``, ``px``, ``py``,
    ``viewport``; degrees), ``anchors`` (a struct with one field per keypoint name, each with
    ``location`` [x y] **1-based**, empty when absent, and ``status``, 1 = visible)).
    One item per object of ``category``: the full photo with ``bbox`` (0-based inclusive),
    ``viewpoint`` (a render :class:`Viewpoint`; ``principal`` converted to 0-based), keypoints
    0-based in the order of :data:`PASCAL3D_KEYPOINTS` (or the file's anchor order for other
    classes) with ``visible = status == 1``.

    Args:
        root: the PASCAL3D+ release folder (holding ``Annotations`` and ``Images``).
        category: e.g. ``"car"``.
        sources: sub-sets to read, e.g. ``("pascal",)`` or ``("pascal", "imagenet")``.
        ids: restrict to these image ids (e.g. a val split list), or None.
        skip_truncated, skip_occluded, skip_difficult: drop flagged objects.
    """

    def __init__(self, root, category: str = "car", sources=("pascal",), ids=None,
                 skip_truncated: bool = False, skip_occluded: bool = False,
                 skip_difficult: bool = False):
        self.root = _require_dir(root, "PASCAL3D+")
        self.category = category
        ann_dirs = [self.root / "Annotations" / f"{category}_{s}" for s in sources]
        ann_dirs = [d for d in ann_dirs if d.is_dir()]
        if not ann_dirs:
            raise FileNotFoundError(f"{self.root}/Annotations: no "
                                    f"{category}_{{{','.join(sources)}}} "
                                    "folder")
        keep = set(ids) if ids is not None else None
        self.items = []
        for d in ann_dirs:
            mats = sorted(d.glob("*.mat"))
            if not mats:
                raise DataError(f"{d}: empty folder (no *.mat annotations)")
            for mat in mats:
                if keep is not None and mat.stem not in keep:
                    continue
                for k, obj in enumerate(self._objects(mat)):
                    if _str(_field(obj, "class")) != category:
                        continue
                    if skip_truncated and _scalar(_field(obj, "truncated"), 0):
                        continue
                    if skip_occluded and _scalar(_field(obj, "occluded"), 0):
                        continue
                    if skip_difficult and _scalar(_field(obj, "difficult"), 0):
                        continue
                    self.items.append((mat, k))

    @staticmethod
    def _record(mat: Path):
        m = load_mat(mat, ("record",))
        rec = m["record"]
        if rec.dtype.names is None or "objects" not in rec.dtype.names:
            raise DataError(f"{mat}: 'record' is not a PASCAL3D+ struct with 'objects'")
        return rec.reshape(-1)[0]

    @classmethod
    def _objects(cls, mat: Path):
        rec = cls._record(mat)
        objs = rec["objects"]
        if not isinstance(objs, np.ndarray) or objs.dtype.names is None:
            raise DataError(f"{mat}: record.objects must be a struct array")
        return list(objs.reshape(-1))

    def _load(self, item) -> Sample:
        mat, k = item
        rec = self._record(mat)
        obj = list(rec["objects"].reshape(-1))[k]
        fn = _str(_field(rec, "filename"))
        if not fn:
            raise DataError(f"{mat}: record has no filename")
        img_path = self.root / "Images" / mat.parent.name / fn
        image = read_image(img_path)
        bb = np.asarray(_field(obj, "bbox"), dtype=np.float64).reshape(-1)
        if bb.size != 4 or not np.isfinite(bb).all():
            raise DataError(f"{mat}: object {k} has no valid bbox (got {bb})")
        bbox = tuple(float(v) - 1.0 for v in bb)
        vp = self._viewpoint(_field(obj, "viewpoint"), mat)
        names, kps, vis = self._anchors(_field(obj, "anchors"), mat)
        meta = {"class": self.category, "annotation": mat, "object_index": k}
        for key in ("truncated", "occluded", "difficult", "cad_index"):
            meta[key] = _scalar(_field(obj, key))
        return Sample(image=image, keypoints=kps, visible=vis, keypoint_names=names, bbox=bbox,
                      viewpoint=vp, path=img_path, meta=meta)

    @staticmethod
    def _viewpoint(vp, mat: Path):
        if vp is None or not isinstance(vp, np.void) and not hasattr(vp, "dtype"):
            return None

        az = _scalar(_field(vp, "azimuth"))
        if az is None:
            az = _scalar(_field(vp, "azimuth_coarse"))
        el = _scalar(_field(vp, "elevation"))
        if el is None:
            el = _scalar(_field(vp, "elevation_coarse"))
        if az is None or el is None:
            return None
        kw = {}
        th = _scalar(_field(vp, "theta"))
        dist = _scalar(_field(vp, "distance"))
        if th is not None:
            kw["theta"] = th
        if dist is not None and dist > 0:
            kw["distance"] = dist
        foc, vpt = _scalar(_field(vp, "focal")), _scalar(_field(vp, "viewport"))
        if foc is not None and foc > 0:
            kw["focal"] = foc
        if vpt is not None and vpt > 0:
            kw["viewport"] = vpt
        px, py = _scalar(_field(vp, "px")), _scalar(_field(vp, "py"))
        if px is not None and py is not None:
            kw["principal"] = (px - 1.0, py - 1.0)
        vals = [az, el] + list(v for v in kw.values() if isinstance(v, float))
        if not all(math.isfinite(v) for v in vals):
            raise DataError(f"{mat}: viewpoint has NaN/inf values")
        return Viewpoint(azimuth=az, elevation=el, **kw)

    def _anchors(self, anchors, mat: Path):
        names = list(PASCAL3D_KEYPOINTS.get(self.category, []))
        if (anchors is not None and getattr(anchors, "dtype", None) is not None
                and anchors.dtype.names):
            for n in anchors.dtype.names:
                if n not in names:
                    names.append(n)
        if not names:
            return None, np.zeros((0, 2)), np.zeros(0, bool)
        kps = np.full((len(names), 2), np.nan)
        vis = np.zeros(len(names), bool)
        if anchors is None or getattr(anchors, "dtype", None) is None or not anchors.dtype.names:
            return names, kps, vis
        for i, n in enumerate(names):
            a = _field(anchors, n)
            if a is None or not hasattr(a, "dtype") or a.dtype.names is None:
                continue
            loc = np.asarray(_field(a, "location"), dtype=np.float64).reshape(-1)
            st = _scalar(_field(a, "status"), 0)
            if loc.size == 2 and np.isfinite(loc).all() and st == 1:
                kps[i] = loc - 1.0
                vis[i] = True
        return names, kps, vis


# --------------------------------------------------------------------------------------------
#: ShapeNetCore synset ids of the paper's categories.
SHAPENET_SYNSETS = {"car": "02958343", "chair": "03001627", "aeroplane": "02691156",
                    "airplane": "02691156"}


def list_shapenet(root, category: str | None = None) -> list[Path]:
    """Mesh files of a ShapeNetCore folder, sorted.

    Accepts ``<root>/<synset>/<id>/models/model_normalized.obj`` (v2),
    ``<root>/<synset>/<id>/model.obj`` (v1) and the same without the synset level
    (``<root>/<id>/…``, as in ``cad/chair/shapenet``). ``category`` (e.g. ``"car"``) selects the
    synset folder when the root holds synsets.
    """
    root = _require_dir(root, "ShapeNet")
    if category is not None:
        syn = SHAPENET_SYNSETS.get(category, category)
        if (root / syn).is_dir():
            root = root / syn
    pats = ("*/models/model_normalized.obj", "*/model_normalized.obj", "*/model.obj",
            "*/*/models/model_normalized.obj", "*/*/model_normalized.obj", "*/*/model.obj")
    found = []
    for pat in pats:
        found = sorted(root.glob(pat))
        if found:
            break
    if not found:
        raise DataError(f"{root}: empty folder (no ShapeNet model_normalized.obj / model.obj)")
    return found
