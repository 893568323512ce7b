"""REFER-layout loader for RefCOCO, RefCOCO+, RefCOCOg (umd, google), RefClef and SynRef.

Usage: ``ds = load_refer("data/refer", "refcoco", "unc"); s = ds.samples("val")[0]; ds.image(s.image_id)``.

Layout under ``root``: ``<dataset>/instances.json`` (COCO: images, annotations, categories) and
``<dataset>/refs(<split_by>).p`` (a pickled list of ref dicts). Images live in ``images/mscoco/images/train2014/``
(RefCOCO family), ``images/saiapr_tc-12/`` (RefClef), ``synref/images/`` (SynRef) or an explicit folder. The refs
pickle is read by a restricted unpickler that refuses every global (class, function), so a data file cannot run code.
Everything is cross-checked on load: duplicate ids, refs pointing at missing annotations or images, annotations on
another image than their ref. One :class:`Sample` is one (referent, sentence) pair.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from foundation.errors import DataError, closest
from runtimes.image import read_image
from runtimes.tokenizer import clean_expression

DATASETS = ("refcoco", "refcoco+", "refcocog", "refclef", "synref")
SPLIT_BYS = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
    "refclef": ("unc", "berkeley"),
    "synref": ("unc",),
}
IMAGE_DIRS = {  # default images folder under the data root (lichengunc/refer convention)
    "refcoco": "images/mscoco/images/train2014",
    "refcoco+": "images/mscoco/images/train2014",
    "refcocog": "images/mscoco/images/train2014",
    "refclef": "images/saiapr_tc-12",
    "synref": "synref/images",
}
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


@dataclass(frozen=True)
class Sample:
    """One (referent, sentence) pair. ``kind`` is the expression type (SynRef) or None (real REFER data)."""

    ref_id: int
    sent_id: int
    image_id: int
    ann_id: int
    category_id: int
    split: str
    text: str
    kind: str | None
    file_name: str


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers and scalars only: any global (class, function, module attribute) is refused."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        # Python 2 pickles (the original refs files) hold byte strings: decode them as UTF-8, never fail on one.
        super().__init__(file, encoding="utf-8", errors="replace")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        raise DataError(
            f"refs file {self.path} names the global {module}.{name}; refused: a refs file may hold only lists, "
            "dicts, strings and numbers (a pickle that names globals can run code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"refs file {self.path} holds a persistent id {pid!r}; refused: plain data only")


def load_refs(path: str | Path) -> list[dict[str, Any]]:
    """Read a REFER ``refs(<split_by>).p`` with the restricted unpickler.

    Raises:
        DataError: the file is missing, corrupt, names a global, or is not a list of dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"refs file {path} not found; expected the REFER layout <root>/<dataset>/refs(<split_by>).p")
    try:
        with open(path, "rb") as fh:
            refs = _PlainUnpickler(fh, path).load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt pickle can fail in many ways (UnpicklingError, EOFError, ValueError, ...)
        raise DataError(f"refs file {path} is not a readable pickle: {type(exc).__name__}: {exc}") from exc
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"refs file {path} must hold a list of dicts, got {type(refs).__name__}")
    return refs


def load_instances(path: str | Path) -> dict[str, Any]:
    """Read a COCO ``instances.json`` and check its three tables are there.

    Raises:
        DataError: the file is missing, not JSON, or lacks ``images``, ``annotations`` or ``categories``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"instances file {path} not found; expected the REFER layout <root>/<dataset>/instances.json")
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"instances file {path} is not valid JSON: {exc}") from exc
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DataError(f"instances file {path} lacks {', '.join(missing)}; expected COCO format")
    return data


def _index(rows: list[dict[str, Any]], what: str, path: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        if "id" not in row:
            raise DataError(f"{path}: a {what} entry has no 'id': {str(row)[:120]}")
        if row["id"] in out:
            raise DataError(f"{path}: duplicate {what} id {row['id']}")
        out[row["id"]] = row
    return out


def decode_image(data: bytes | Path, image_id: int | str = "?") -> np.ndarray:
    """Decode an image file to uint8 RGB ``[H, W, 3]`` with :func:`runtimes.image.read_image`.

    Raises:
        DataError: the file is missing, cannot be decoded or is over the pixel limit (names the image id and file).
    """
    name = data if isinstance(data, Path) else "<bytes>"
    return read_image(data, label=f"image {image_id} ({name})")


def annotation_mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """The bool ``[H, W]`` mask of a COCO annotation: polygons (parts unioned), RLE or uncompressed RLE (iscrowd).

    Raises:
        DataError: the segmentation is of no known form or its RLE size differs from the image's.
    """
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        # pycocotools reads a list whose first entry has 4 numbers as a box, and a polygon needs 3 points
        parts = [[float(v) for v in p] for p in seg if isinstance(p, list) and len(p) >= 6]
        if not parts:
            return np.zeros((height, width), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [height, width]:
            raise DataError(
                f"annotation {ann.get('id')}: RLE size {seg['size']} differs from its image {height}x{width}"
            )
        if isinstance(seg["counts"], list):  # uncompressed RLE, as COCO stores iscrowd regions
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
            rle = {"size": [height, width], "counts": counts}
    else:
        raise DataError(f"annotation {ann.get('id')}: segmentation is neither polygons nor RLE: {str(seg)[:80]}")
    return mask_utils.decode(rle).astype(bool)


@dataclass
class ReferDataset:
    """A loaded REFER data set. Build it with :func:`load_refer`; this class does no I/O until asked for pixels.

    Attributes:
        name: data set name (refcoco, ..., synref).
        split_by: refs partition (unc, google, umd, berkeley).
        root: the data root holding ``<name>/``.
        images_dir: folder the images' ``file_name`` is relative to.
        images: image id -> COCO image entry.
        anns: annotation id -> COCO annotation.
        categories: category id -> name.
        refs: ref id -> ref dict.
    """

    name: str
    split_by: str
    root: Path
    images_dir: Path
    images: dict[int, dict[str, Any]]
    anns: dict[int, dict[str, Any]]
    categories: dict[int, str]
    refs: dict[int, dict[str, Any]]
    _samples: dict[str, list[Sample]] = field(default_factory=dict, repr=False)
    _anns_by_image: dict[int, list[int]] | None = field(default=None, repr=False)

    @property
    def splits(self) -> list[str]:
        """The splits that hold at least one sample."""
        return sorted(self._samples)

    def samples(self, split: str) -> list[Sample]:
        """Every (referent, sentence) sample of a split, in refs-file order.

        Raises:
            DataError: the split does not exist (lists the valid splits).
        """
        if split not in self._samples:
            raise DataError(
                f"unknown split {split!r} for {self.name} ({self.split_by}){closest(split, self._samples)}; "
                f"valid: {', '.join(self.splits)}"
            )
        return self._samples[split]

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self._image(image_id)["file_name"]

    def image(self, image_id: int) -> np.ndarray:
        """The image as uint8 RGB ``[H, W, 3]``.

        Raises:
            DataError: unknown id, missing file, corrupt file, or a size that differs from ``instances.json``.
        """
        info = self._image(image_id)
        path = self.images_dir / info["file_name"]
        if not path.is_file():
            raise DataError(f"image {image_id} file {path} not found (images folder {self.images_dir})")
        rgb = decode_image(path, image_id)
        if rgb.shape[:2] != (info["height"], info["width"]):
            raise DataError(
                f"image {image_id} file {path} is {rgb.shape[1]}x{rgb.shape[0]} but instances.json says "
                f"{info['width']}x{info['height']}; its masks would not line up"
            )
        return rgb

    def mask(self, ann_id: int) -> np.ndarray:
        """The bool ``[H, W]`` mask of an annotation at its image's original resolution.

        Raises:
            DataError: unknown id, a segmentation of no known form, or a mask without a single pixel (a referent
                the model could never find; it would score IoU 0 or be skipped silently).
        """
        if ann_id not in self.anns:
            raise DataError(f"unknown annotation id {ann_id} in {self.name}")
        ann = self.anns[ann_id]
        info = self._image(ann["image_id"])
        mask = annotation_mask(ann, info["height"], info["width"])
        if not mask.any():
            raise DataError(
                f"annotation {ann_id} of {self.name} (image {ann['image_id']}, {info['file_name']}) has an empty "
                "mask: its segmentation covers no pixel; fix or drop the annotation and the refs that use it"
            )
        return mask

    @property
    def category_ids(self) -> list[int]:
        """Category ids in ascending order; label ``k + 1`` of :meth:`category_map` is ``category_ids[k]``."""
        return sorted(self.categories)

    def category_map(self, image_id: int) -> np.ndarray:
        """Per-pixel category labels ``[H, W]`` uint16 of every annotated object of an image (0 = no object).

        Label ``k + 1`` is the k-th of :attr:`category_ids`. Where annotations overlap, the later one in
        ``instances.json`` wins (COCO crowd regions included). Annotations without a pixel are skipped here.
        """
        info = self._image(image_id)
        if self._anns_by_image is None:
            index: dict[int, list[int]] = {}
            for ann_id, ann in self.anns.items():
                index.setdefault(ann["image_id"], []).append(ann_id)
            self._anns_by_image = index
        labels = {cat: k + 1 for k, cat in enumerate(self.category_ids)}
        out = np.zeros((info["height"], info["width"]), np.uint16)
        for ann_id in self._anns_by_image.get(image_id, []):
            ann = self.anns[ann_id]
            if ann["category_id"] not in labels:
                raise DataError(
                    f"annotation {ann_id} of {self.name} has category_id {ann['category_id']}, which is not in "
                    f"instances.json's categories ({len(labels)} of them)"
                )
            out[annotation_mask(ann, info["height"], info["width"])] = labels[ann["category_id"]]
        return out

    def counts(self) -> dict[str, Any]:
        """Images, refs and sentences per split (and sentences per kind where sentences carry one)."""
        out: dict[str, Any] = {"images": {}, "refs": {}, "sentences": {}, "kinds": {}}
        for split, samples in sorted(self._samples.items()):
            out["images"][split] = len({s.image_id for s in samples})
            out["refs"][split] = len({s.ref_id for s in samples})
            out["sentences"][split] = len(samples)
            kinds: dict[str, int] = {}
            for s in samples:
                if s.kind is not None:
                    kinds[s.kind] = kinds.get(s.kind, 0) + 1
            if kinds:
                out["kinds"][split] = dict(sorted(kinds.items()))
        return out

    def _image(self, image_id: int) -> dict[str, Any]:
        if image_id not in self.images:
            raise DataError(f"unknown image id {image_id} in {self.name}")
        return self.images[image_id]


def default_images_dir(root: str | Path, dataset: str) -> Path:
    """Where the REFER convention puts the images of ``dataset`` under the data root."""
    if dataset not in IMAGE_DIRS:
        raise DataError(f"unknown dataset {dataset!r}{closest(dataset, DATASETS)}; valid: {', '.join(DATASETS)}")
    return Path(root) / IMAGE_DIRS[dataset]


def load_refer(
    root: str | Path, dataset: str, split_by: str = "unc", images_dir: str | Path | None = None
) -> ReferDataset:
    """Load and cross-check a REFER data set (or SynRef, written in the same layout).

    Args:
        root: the data root, holding ``<dataset>/instances.json`` and ``<dataset>/refs(<split_by>).p``.
        dataset: one of :data:`DATASETS`.
        split_by: refs partition; valid values depend on the data set (:data:`SPLIT_BYS`).
        images_dir: images folder; default: the REFER convention under ``root`` (:data:`IMAGE_DIRS`).

    Raises:
        DataError: unknown data set or partition, a missing or corrupt file, duplicate or dangling ids.
    """
    if dataset not in SPLIT_BYS:
        raise DataError(f"unknown dataset {dataset!r}{closest(dataset, DATASETS)}; valid: {', '.join(DATASETS)}")
    if split_by not in SPLIT_BYS[dataset]:
        valid = SPLIT_BYS[dataset]
        raise DataError(f"{dataset} has no split_by {split_by!r}{closest(split_by, valid)}; valid: {', '.join(valid)}")
    folder = Path(root) / dataset
    instances_path, refs_path = folder / "instances.json", folder / f"refs({split_by}).p"
    instances = load_instances(instances_path)
    images = _index(instances["images"], "image", instances_path)
    anns = _index(instances["annotations"], "annotation", instances_path)
    categories = {
        k: str(c.get("name", k)) for k, c in _index(instances["categories"], "category", instances_path).items()
    }
    for ann in anns.values():
        if ann.get("image_id") not in images:
            raise DataError(
                f"{instances_path}: annotation {ann['id']} points at unknown image id {ann.get('image_id')}"
            )
    refs: dict[int, dict[str, Any]] = {}
    samples: dict[str, list[Sample]] = {}
    sent_ids: set[int] = set()
    for n, ref in enumerate(load_refs(refs_path)):
        _check_ref(ref, n, refs, images, anns, categories, refs_path)
        refs[ref["ref_id"]] = ref
        for sent in ref["sentences"]:
            sample = _sample(ref, sent, anns[ref["ann_id"]], images[ref["image_id"]], refs_path)
            if sample.sent_id in sent_ids:
                raise DataError(f"{refs_path}: duplicate sentence id {sample.sent_id} (ref {ref['ref_id']})")
            sent_ids.add(sample.sent_id)
            samples.setdefault(ref["split"], []).append(sample)
    image_root = Path(images_dir) if images_dir is not None else default_images_dir(root, dataset)
    return ReferDataset(dataset, split_by, Path(root), image_root, images, anns, categories, refs, samples)


def _check_ref(
    ref: dict[str, Any],
    n: int,
    refs: dict[int, dict[str, Any]],
    images: dict[int, Any],
    anns: dict[int, Any],
    categories: dict[int, str],
    path: Path,
) -> None:
    missing = [k for k in REF_KEYS if k not in ref]
    if missing:
        raise DataError(f"{path}: ref #{n} lacks {', '.join(missing)}; a ref needs {', '.join(REF_KEYS)}")
    ref_id, ann_id, image_id = ref["ref_id"], ref["ann_id"], ref["image_id"]
    if ref_id in refs:
        raise DataError(f"{path}: duplicate ref id {ref_id}")
    if ann_id not in anns:
        raise DataError(f"{path}: ref {ref_id} points at annotation id {ann_id}, which instances.json lacks")
    if image_id not in images:
        raise DataError(f"{path}: ref {ref_id} points at image id {image_id}, which instances.json lacks")
    if _segmentation_empty(anns[ann_id].get("segmentation")):
        raise DataError(
            f"{path}: ref {ref_id} points at annotation {ann_id}, whose segmentation is empty "
            f"({str(anns[ann_id].get('segmentation'))[:60]}); a referent needs a mask"
        )
    if anns[ann_id]["image_id"] != image_id:
        raise DataError(
            f"{path}: ref {ref_id} is on image {image_id} but its annotation {ann_id} is on image "
            f"{anns[ann_id]['image_id']}"
        )
    category_id = ref.get("category_id", anns[ann_id].get("category_id"))
    if category_id not in categories:
        raise DataError(f"{path}: ref {ref_id} has category id {category_id}, which instances.json lacks")
    if not isinstance(ref["split"], str) or not isinstance(ref["sentences"], list):
        raise DataError(f"{path}: ref {ref_id} needs a str split and a list of sentences")


def _segmentation_empty(seg: Any) -> bool:
    """True when a segmentation cannot cover a pixel, told without rasterizing it: no polygon of 3+ points, or an
    RLE without a foreground run. Forms :func:`annotation_mask` does not know are left for it to report."""
    if seg is None or isinstance(seg, list):
        return not any(isinstance(p, list) and len(p) >= 6 for p in seg or [])
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed: runs alternate 0s and 1s
        return sum(seg["counts"][1::2]) == 0
    if isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)) and "size" in seg:
        counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
        try:
            return int(mask_utils.area({"size": list(seg["size"]), "counts": counts})) == 0
        except (TypeError, ValueError, UnicodeEncodeError):
            return False
    return False


def _sample(ref: dict[str, Any], sent: Any, ann: dict[str, Any], image: dict[str, Any], path: Path) -> Sample:
    if not isinstance(sent, dict) or "sent_id" not in sent:
        raise DataError(f"{path}: ref {ref['ref_id']} has a sentence without sent_id: {str(sent)[:80]}")
    text = sent.get("sent") or sent.get("raw") or " ".join(sent.get("tokens", []))
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{path}: sentence {sent['sent_id']} of ref {ref['ref_id']} has no text")
    text = clean_expression(text, f"{path}: sentence {sent['sent_id']} of ref {ref['ref_id']}")
    return Sample(
        ref_id=ref["ref_id"],
        sent_id=sent["sent_id"],
        image_id=ref["image_id"],
        ann_id=ref["ann_id"],
        category_id=ref.get("category_id", ann.get("category_id")),
        split=ref["split"],
        text=text,
        kind=sent.get("kind"),
        file_name=image["file_name"],  # the image's, relative to images_dir (a ref's own file_name is unused)
    )
