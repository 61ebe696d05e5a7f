"""The images ``nunet eval`` is run on, each with its ground truth (:class:`EvalImage`): the seeded
synthetic suite and its degraded copies, the annotated real images, the DSB validation split,
and a user's folder of images with centroid files.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nunet.errors import NUNetError

SUITES = ("heldout", "synthetic", "dsb")


@dataclass
class EvalImage:
    """One 2D plane with its ground truth."""

    dataset: str
    name: str
    image: np.ndarray
    mask: np.ndarray
    centroids: np.ndarray
    radius: float
    invert: bool = False
    family: str = "synthetic"
    band: str = ""  # the nucleus-size band (nunet.data.dsb.SIZE_BANDS) where the suite reports one


def synthetic_items(
    n_per_modality: int = 4, size: int = 256, seed: int = 0, stacks: int = 1, modalities: Sequence[str] | None = None
) -> list[EvalImage]:
    """The built-in seeded suite: 2D images of each modality plus 3D stacks evaluated per plane.

    ``modalities`` defaults to ``nunet.data.synth.MODALITIES``; an unknown name is a NUNetError.
    """
    from scipy import ndimage as ndi

    from nunet.data.synth import MODALITIES, PRESETS, evaluation_seed, synth_image, synth_suite

    try:
        suite = synth_suite(n_per_modality, (size, size), seed, tuple(modalities or MODALITIES))
    except ValueError as exc:  # an unknown modality
        raise NUNetError(str(exc)) from None
    items = [
        EvalImage(
            s.modality,
            f"{s.modality}-{i}",
            s.image,
            s.labels > 0,
            s.centroids,
            s.radius,
            PRESETS[s.modality].dark_blobs,
            "synthetic",
        )
        for i, s in enumerate(suite)
    ]
    for k in range(stacks):
        stack = synth_image("sparse", (8, size // 2, size // 2), seed=evaluation_seed(seed * 1000 + 900 + k))
        for z in range(0, stack.image.shape[0], 2):
            plane = stack.labels[z]
            present = [v for v in np.unique(plane) if v > 0]
            if not present:
                continue
            centroids = np.array(ndi.center_of_mass(plane > 0, plane, present)).reshape(-1, 2)
            items.append(
                EvalImage(
                    "sparse-3d",
                    f"stack{k}-z{z}",
                    stack.image[z],
                    plane > 0,
                    centroids,
                    stack.radius,
                    family="synthetic",
                )
            )
    return items


def degraded_synthetic_items(n_per_modality: int = 3, size: int = 256, seed: int = 0) -> list[EvalImage]:
    """The synthetic modalities degraded by :func:`nunet.data.degrade.degrade_dark_aware` (family
    ``synthetic-degraded``; dark-blob images stay dark-blob images)."""
    from nunet.data.degrade import Ranges, degrade_dark_aware
    from nunet.data.synth import MODALITIES, PRESETS, evaluation_seed, synth_image

    items = []
    for k, modality in enumerate(MODALITIES):
        dark = PRESETS[modality].dark_blobs
        for i in range(n_per_modality):
            s = synth_image(modality, (size, size), seed=evaluation_seed(seed * 1000 + 500 + 10 * i + k))
            d = degrade_dark_aware(
                s.image,
                s.labels,
                s.radius,
                evaluation_seed(seed * 1000 + 700 + 10 * i + k),
                Ranges(max_side=size),
                dark,
            )
            items.append(
                EvalImage(
                    f"{modality}-degraded",
                    f"{modality}-degraded-{i}",
                    d.image,
                    d.labels > 0,
                    d.centroids,
                    d.radius,
                    dark,
                    "synthetic-degraded",
                )
            )
    return items


def real_items(real, degraded_2d: int = 8, degraded_planes: int = 10, seed: int = 0) -> list[EvalImage]:
    """The annotated real images (family ``real``) and degraded copies of them (``real-degraded``).

    ``real`` (:class:`nunet.data.real.RealImages`): the 2D image at scale 1 (radius 12) and 1/2 (radius 6),
    the 3D stack plane by plane (radius 7). Degraded: ``degraded_2d`` draws from the 2D image (scale
    0.5-1.5, at most 384 px) and ``degraded_planes`` planes of the stack (scale 0.7-2).
    """
    from nunet.data.degrade import Ranges, centroids_of, degrade
    from nunet.data.synth import evaluation_seed

    def item(dataset: str, name: str, image, labels, radius: float, family: str) -> EvalImage:
        return EvalImage(
            dataset, name, np.asarray(image, np.float32), labels > 0, centroids_of(labels), radius, family=family
        )

    half = real.image2d.reshape(real.image2d.shape[0] // 2, 2, -1, 2).mean(axis=(1, 3))
    items = [
        item("dsb2018", "dsb2018", real.image2d, real.labels2d, 12.0, "real"),
        item("dsb2018-half", "dsb2018-half", half, real.labels2d[::2, ::2], 6.0, "real"),
    ]
    planes = [z for z in range(len(real.stack)) if real.labels3d[z].any()]
    items += [item("stardist-3d", f"z{z:02d}", real.stack[z], real.labels3d[z], 7.0, "real") for z in planes]
    for i in range(degraded_2d):
        d = degrade(
            real.image2d,
            real.labels2d,
            12.0,
            evaluation_seed(seed * 1000 + 800 + i),
            Ranges(scale=(0.5, 1.5), max_side=384),
        )
        items.append(item("dsb2018-degraded", f"dsb2018-degraded-{i}", d.image, d.labels, d.radius, "real-degraded"))
    for j, z in enumerate(planes[:: max(1, len(planes) // degraded_planes)][:degraded_planes]):
        d = degrade(
            real.stack[z], real.labels3d[z], 7.0, evaluation_seed(seed * 1000 + 850 + j), Ranges(scale=(0.7, 2.0))
        )
        items.append(item("stardist-3d-degraded", f"z{z:02d}-degraded", d.image, d.labels, d.radius, "real-degraded"))
    return items


def dsb_items(root: str | Path | None = None, seed: int = 0) -> list[EvalImage]:
    """The DSB validation images (a checkout at ``root``, else nunet's committed subset), clean (families
    ``dsb`` and ``dsb-brightfield``) and degraded by :func:`nunet.data.degrade.degrade` at their own scale
    (``-degraded``; a fresh evaluation seed per image and draw). Datasets are the acquisitions
    (:func:`nunet.data.dsb.group_of`: a held-out image size with all its background levels)."""
    from nunet.data import dsb
    from nunet.data.degrade import Ranges, centroids_of, degrade_dark_aware
    from nunet.data.synth import evaluation_seed

    items = []
    for k, real in enumerate(dsb.load_split("validation", root)):
        family = "dsb" if real.modality == "fluorescence" else f"dsb-{real.modality}"
        name, dataset = real.id[:12], dsb.group_of(real.kind)
        items.append(
            EvalImage(
                dataset,
                name,
                real.image,
                real.labels > 0,
                centroids_of(real.labels),
                real.radius,
                real.invert,
                family,
                real.band,
            )
        )
        d = degrade_dark_aware(
            real.image,
            real.labels,
            real.radius,
            evaluation_seed(seed * 1000 + 600 + k),
            Ranges(scale=(1.0, 1.0), max_side=max(real.image.shape)),
            real.invert,
        )
        items.append(
            EvalImage(
                f"{dataset}-degraded",
                f"{name}-degraded",
                d.image,
                d.labels > 0,
                d.centroids,
                real.radius,
                real.invert,
                f"{family}-degraded",
                real.band,
            )
        )
    return items


def suite_items(suite: str, real_data: str | Path | None = None, seed: int = 0) -> list[EvalImage]:
    """The images of a named suite (see ``SUITES`` and the module docstring); ``real_data`` is the
    stardist images' source for ``heldout`` and the DSB checkout for ``dsb``."""
    if suite == "synthetic":
        return synthetic_items(seed=seed)
    if suite == "dsb":
        return dsb_items(real_data, seed)
    if suite == "heldout":
        from nunet.data.real import load_real_images

        real = load_real_images(real_data)
        return synthetic_items(seed=seed) + degraded_synthetic_items(seed=seed) + real_items(real, seed=seed)
    raise NUNetError(f"unknown suite '{suite}'; use one of {', '.join(SUITES)}")


def folder_items(
    images: Path, masks: Path | None, radius: float, invert: bool = False, centroids: Path | None = None
) -> list[EvalImage]:
    """Images of a folder paired by file stem with masks/label images and/or centroid CSVs.

    A mask or label image (label > 0 is foreground) gives the contrast mask and the centroids
    of its objects; a CSV (columns ``y,x``, one row per object) gives centroids only, and the
    contrast columns of such images are left empty.
    """
    from scipy import ndimage as ndi

    from nunet.io import read_image

    def by_stem(folder: Path | None, suffix: str | None = None) -> dict[str, Path]:
        if folder is None:
            return {}
        return {p.stem: p for p in folder.iterdir() if p.is_file() and (suffix is None or p.suffix == suffix)}

    mask_files, csv_files = by_stem(masks), by_stem(centroids, ".csv")
    items = []
    for path in sorted(p for p in images.iterdir() if p.is_file()):
        if path.stem not in mask_files and path.stem not in csv_files:
            continue
        image = read_image(path).data.astype(np.float32)
        if image.ndim != 2:
            raise NUNetError(f"{path}: eval needs single 2D planes, got shape {image.shape}")
        mask = np.zeros(image.shape, bool)
        if path.stem in mask_files:
            labels = read_image(mask_files[path.stem]).data
            if labels.shape != image.shape:
                raise NUNetError(f"{mask_files[path.stem]}: mask shape {labels.shape} differs from {image.shape}")
            labels = ndi.label(labels > 0)[0] if labels.max() <= 1 else labels.astype(np.int32)
            present = [v for v in np.unique(labels) if v > 0]
            points = np.array(ndi.center_of_mass(labels > 0, labels, present)).reshape(-1, 2)
            mask = labels > 0
        if path.stem in csv_files:
            points = _read_centroids(csv_files[path.stem])
        items.append(EvalImage(images.name, path.stem, image, mask, points, radius, invert, images.name))
    if not items:
        raise NUNetError(f"{images}: no image with a mask or centroid CSV of the same name")
    return items


def _read_centroids(path: Path) -> np.ndarray:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        return np.array([[float(r["y"]), float(r["x"])] for r in rows]).reshape(-1, 2)
    except (KeyError, ValueError) as exc:
        raise NUNetError(f"{path}: centroid CSV needs numeric columns y and x ({exc})") from exc
