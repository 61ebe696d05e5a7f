"""``nunet eval``: NU-Net against classical filters on images with ground truth.

For each image: the raw image, the paper's classical baselines (log LUT, Gaussian, median,
DoG) and each NU-Net model are compared by contrast ratio (all methods) and by blob_log
detection F1 (raw, DoG, NU-Net), at a fixed threshold and at the threshold that maximises
the mean F1 of each (dataset, method) pair. ``dog-tuned`` is DoG with its scale also chosen
per dataset (among ``DOG_SCALES`` times the expected radius), the strongest classical
baseline. Averages are taken per dataset, then across datasets, as in the paper's Table 2.
Dark-blob datasets (THG-like) are inverted first, as the paper did for its dark-blob training
sets. Where every image has a mask, ``truth-mask`` feeds the ground-truth foreground itself to
the same detection: the F1 a perfect filter would get, the ceiling of the protocol (its contrast
is left out: a binary mask's contrast ratio only measures the background floor).

Besides the best threshold per dataset, each method gets the one threshold that maximises its
mean F1 over every dataset at once (``f1_shared``): the drop-in use, where one threshold must
transfer between acquisitions.

A suite can be drawn several times (its seed, then the next ones): each draw is evaluated on its
own (thresholds and DoG scales chosen per draw, as for one draw), and :func:`summarise_draws`
gives each figure's mean over the draws with a 95% interval, and its paired difference to the
tuned DoG: one draw of a few annotated images cannot resolve differences of a few nuclei.

Suites (``SUITES``): ``synthetic`` is the seeded synthetic suite; ``heldout`` adds to it the
same modalities degraded by :mod:`nunet.degrade`, the annotated real images
(:mod:`nunet.realdata`) and those real images degraded. ``dsb`` is the validation split of the
2018 Data Science Bowl (:mod:`nunet.data.dsb`: acquisition kinds never trained on; reserved ids
never read), each image clean and degraded; its datasets are the acquisition kinds, and each image
also has a nucleus-size band (:func:`band_summary`).

NU-Net models are run with the ``radius`` option the evaluation is given: ``auto`` (estimated per
image, as users run them), ``off`` (at the image's own scale) or ``truth`` (each image's true
median radius). Every image of a suite comes from
evaluation seeds (:func:`nunet.synth.evaluation_seed`), which training never uses. Datasets are
grouped in families (``synthetic``, ``synthetic-degraded``, ``real``, ``real-degraded``); the
summary has one block per family and one over all datasets (``all``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nunet import baselines, metrics
from nunet.errors import NUNetError

DETECTION_METHODS = ("raw", "dog", "dog-tuned")
SUITES = ("heldout", "synthetic", "dsb")
#: The ``radius`` modes of :func:`evaluate` besides a number of pixels.
RADIUS_MODES = ("auto", "off", "truth")
ALL = "all"
CEILING = "truth-mask"
#: The method every other is compared with over draws (:func:`summarise_draws`): the strongest classical one.
REFERENCE = "dog-tuned"
#: The suffix of a model's method name when it runs with test-time augmentation.
AUGMENTED = "+augment"
#: Factors on the expected radius among which ``dog-tuned`` picks its DoG scale per dataset.
DOG_SCALES = (0.5, 0.7, 1.0, 1.4, 2.0)
THRESHOLDS = tuple(float(t) for t in np.geomspace(0.01, 0.5, 12))
FIXED_THRESHOLD = 0.1


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


@dataclass
class Row:
    """Results of one method on one image (a line of results.csv)."""

    family: str
    dataset: str
    image: str
    method: str
    cr_before: float
    cr_after: float
    gain: float
    fold: float
    f1_fixed: float = float("nan")
    threshold: float = float("nan")
    f1_best: float = float("nan")
    precision_best: float = float("nan")
    recall_best: float = float("nan")
    radius_scale: float = float("nan")
    threshold_shared: float = float("nan")
    f1_shared: float = float("nan")
    draw: int = 0  # the seed of the suite's draw
    band: str = ""


def synthetic_items(
    n_per_modality: int = 4, size: int = 256, seed: int = 0, stacks: int = 1, modalities: Sequence[str] | None = None
) -> list[EvalImage]:
    """The built-in seeded suite: 2D images of each modality plus 3D stacks evaluated per plane.

    ``modalities`` defaults to ``nunet.synth.MODALITIES``; an unknown name is a NUNetError.
    """
    from scipy import ndimage as ndi

    from nunet.synth import MODALITIES, PRESETS, evaluation_seed, synth_image, synth_suite

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
    """The synthetic modalities degraded by :func:`nunet.degrade.degrade_dark_aware` (family
    ``synthetic-degraded``; dark-blob images stay dark-blob images)."""
    from nunet.degrade import Ranges, degrade_dark_aware
    from nunet.synth import MODALITIES, PRESETS, evaluation_seed, synth_image

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

    ``real`` (:class:`nunet.realdata.RealImages`): the 2D image at scale 1 (radius 12) and 1/2 (radius 6),
    the 3D stack plane by plane (radius 7). Degraded: ``degraded_2d`` draws from the 2D image (scale
    0.5-1.5, at most 384 px) and ``degraded_planes`` planes of the stack (scale 0.7-2).
    """
    from nunet.degrade import Ranges, centroids_of, degrade
    from nunet.synth import evaluation_seed

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
    ``dsb`` and ``dsb-brightfield``) and degraded by :func:`nunet.degrade.degrade` at their own scale
    (``-degraded``; a fresh evaluation seed per image and draw). Datasets are the acquisitions
    (:func:`nunet.data.dsb.group_of`: a held-out image size with all its background levels)."""
    from nunet.data import dsb
    from nunet.degrade import Ranges, centroids_of, degrade_dark_aware
    from nunet.synth import evaluation_seed

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
        from nunet.realdata import load_real_images

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


def _source(item: EvalImage) -> np.ndarray:
    return 1.0 - baselines.minmax(item.image) if item.invert else item.image


def _has_mask(item: EvalImage) -> bool:
    """Whether the item's mask has both foreground and background (contrast and the ceiling need both)."""
    return bool(item.mask.any() and not item.mask.all())


def filtered(item: EvalImage, method: str, models: dict, radius: str | float = "auto") -> np.ndarray:
    """The image of ``item`` as seen by ``method``, in [0, 1]; models run with ``radius`` (``RADIUS_MODES``
    or pixels)."""
    from nunet.inference import enhance

    if method == CEILING:
        return item.mask.astype(np.float32)
    source = _source(item)
    if method == "raw":
        return baselines.minmax(source)
    if method in baselines.CLASSICAL:
        return baselines.classical(method, source, item.radius)
    size = item.radius if radius == "truth" else radius
    return enhance(source, models[method], axes="YX", augment=method.endswith(AUGMENTED), radius=size)


def evaluate(
    items: Sequence[EvalImage],
    models: Sequence[str] = (),
    thresholds: Sequence[float] = THRESHOLDS,
    fixed_threshold: float = FIXED_THRESHOLD,
    augment: bool = False,
    draw: int = 0,
    radius: str | float = "auto",
) -> tuple[list[Row], dict]:
    """Run every method on every item; return the per-image rows and the filtered images.

    With ``augment``, every model is also run with test-time augmentation, as method
    ``NAME+augment``. ``draw`` (the suite's seed) is written to every row. Models run with the
    ``radius`` option (``RADIUS_MODES``, or pixels; see the module docstring).

    Returns
    -------
    rows : list of Row
    outputs : dict
        ``outputs[(dataset, image, method)]`` is the filtered [0, 1] image (for the figures).
    """
    from nunet.registry import load_model
    from nunet.runtime import resolve_device

    loaded = {name: load_model(name, resolve_device("auto")) for name in models}
    if augment:
        loaded.update({name + AUGMENTED: model for name, model in list(loaded.items())})
    ceiling = [CEILING] if all(_has_mask(i) for i in items) else []
    methods = ["raw", *baselines.CLASSICAL, "dog-tuned", *loaded, *ceiling]
    outputs = {
        (i.dataset, i.name, m): filtered(i, m, loaded, radius) for i in items for m in methods if m != "dog-tuned"
    }
    datasets = list(dict.fromkeys(i.dataset for i in items))
    groups = {d: [i for i in items if i.dataset == d] for d in datasets}
    dog_scale = {}
    for dataset, group in groups.items():
        dog_scale[dataset], images = tune_dog(group, thresholds)
        outputs.update({(i.dataset, i.name, "dog-tuned"): image for i, image in zip(group, images)})
    rows: dict[tuple[str, str, str], Row] = {}
    for item in items:
        has_mask = _has_mask(item)
        nan = float("nan")
        before = metrics.contrast_ratio(outputs[(item.dataset, item.name, "raw")], item.mask) if has_mask else nan
        for m in methods:
            after = (
                metrics.contrast_ratio(outputs[(item.dataset, item.name, m)], item.mask)
                if has_mask and m != CEILING
                else nan
            )
            rows[(item.dataset, item.name, m)] = Row(
                item.family,
                item.dataset,
                item.name,
                m,
                before,
                after,
                after - before,
                after / before,
                draw=draw,
                band=item.band,
            )
    lowest = min(min(thresholds), fixed_threshold)
    for m in [*DETECTION_METHODS, *loaded, *ceiling]:
        # f1[dataset][k, j]: image k of the dataset at thresholds[j]
        f1, candidates = {}, {}
        for dataset, group in groups.items():
            candidates[dataset] = [
                metrics.BlobCandidates.of(outputs[(i.dataset, i.name, m)], i.radius, lowest) for i in group
            ]
            f1[dataset] = np.array(
                [
                    [metrics.match(c.detect(t), i.centroids, i.radius).f1 for t in thresholds]
                    for c, i in zip(candidates[dataset], group)
                ]
            )
            for item, c in zip(group, candidates[dataset]):
                rows[(item.dataset, item.name, m)].f1_fixed = metrics.match(
                    c.detect(fixed_threshold), item.centroids, item.radius
                ).f1
        shared = int(np.argmax(np.mean([scores.mean(axis=0) for scores in f1.values()], axis=0)))
        for dataset, group in groups.items():
            best = int(np.argmax(f1[dataset].mean(axis=0)))
            for k, (item, c) in enumerate(zip(group, candidates[dataset])):
                row = rows[(item.dataset, item.name, m)]
                row.threshold, row.f1_best = float(thresholds[best]), float(f1[dataset][k, best])
                row.threshold_shared, row.f1_shared = float(thresholds[shared]), float(f1[dataset][k, shared])
                matching = metrics.match(c.detect(row.threshold), item.centroids, item.radius)
                row.precision_best, row.recall_best = matching.precision, matching.recall
                if m == "dog-tuned":
                    row.radius_scale = dog_scale[dataset]
    return list(rows.values()), outputs


def tune_dog(group: Sequence[EvalImage], thresholds: Sequence[float]) -> tuple[float, list[np.ndarray]]:
    """DoG with its scale tuned on one dataset: the factor of ``DOG_SCALES`` on the expected radius
    whose best-threshold mean F1 is highest; returns that factor and the filtered images."""
    best: tuple[float, float, list[np.ndarray]] | None = None
    for scale in DOG_SCALES:
        images = [baselines.dog(_source(i), i.radius * scale) for i in group]
        _, score = metrics.best_threshold(images, [i.centroids for i in group], [i.radius for i in group], thresholds)
        if best is None or score > best[0]:
            best = (score, scale, images)
    return best[1], best[2]


def summarise(rows: Sequence[Row]) -> list[dict]:
    """Per family (and over all datasets, family ``all``) and method: the mean over datasets of the
    per-dataset means (and the std across datasets) of gain, fold change and the three F1s."""
    summary = []
    families = list(dict.fromkeys(r.family for r in rows))
    for family in [*families, ALL] if len(families) > 1 else [ALL]:
        for method in dict.fromkeys(r.method for r in rows):
            per_dataset = {}
            for r in rows:
                if r.method == method and family in (ALL, r.family):
                    per_dataset.setdefault(r.dataset, []).append(r)

            def stat(field: str) -> tuple[float, float]:
                values = [[getattr(r, field) for r in rs] for rs in per_dataset.values()]
                means = [float(np.mean([v for v in vs if np.isfinite(v)])) for vs in values if any(np.isfinite(vs))]
                return (float(np.mean(means)), float(np.std(means))) if means else (float("nan"), float("nan"))

            summary.append(
                {
                    "family": family,
                    "method": method,
                    "gain": stat("gain"),
                    "fold": stat("fold"),
                    "f1_fixed": stat("f1_fixed"),
                    "f1_best": stat("f1_best"),
                    "f1_shared": stat("f1_shared"),
                }
            )
    return summary


def markdown_table(summary: Sequence[dict], methods: Sequence[str] | None = None) -> str:
    """A Markdown table of best-threshold F1 per family, F1 at the shared threshold and contrast
    gain (over all datasets), one row per detection method (for model cards and reports)."""
    families = list(dict.fromkeys(s["family"] for s in summary))
    by = {(s["family"], s["method"]): s for s in summary}
    shown = [
        m for m in (methods or dict.fromkeys(s["method"] for s in summary)) if np.isfinite(by[(ALL, m)]["f1_best"][0])
    ]
    head = ["method", *(f"F1 {f}" for f in families), "F1 shared threshold", "contrast gain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in shown:
        cells = [f"{by[(f, m)]['f1_best'][0]:.2f}" for f in families]
        gain = by[(ALL, m)]["gain"][0]
        cells += [f"{by[(ALL, m)]['f1_shared'][0]:.2f}", f"{gain:.1f}" if np.isfinite(gain) else "-"]
        lines.append("| " + " | ".join([m, *cells]) + " |")
    return "\n".join(lines) + "\n"


def dataset_table(rows: Sequence[Row]) -> str:
    """A Markdown table of the mean best-threshold F1 per dataset (an acquisition kind for the DSB
    suite; its images at the dataset's best threshold), one column per detection method."""
    methods = list(dict.fromkeys(r.method for r in rows if np.isfinite(r.f1_best)))
    datasets = list(dict.fromkeys((r.family, r.dataset) for r in rows))
    lines = ["| family | dataset | images | " + " | ".join(methods) + " |", "|" + "---|" * (3 + len(methods))]
    for family, dataset in datasets:
        chosen = {m: [r.f1_best for r in rows if (r.dataset, r.method) == (dataset, m)] for m in methods}
        cells = [f"{np.mean(chosen[m]):.3f}" for m in methods]
        lines.append(f"| {family} | {dataset} | {len(chosen[methods[0]])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def band_summary(rows: Sequence[Row]) -> list[dict]:
    """Per family, size band and method (rows with a band), and per family over every band (band
    ``all``): the number of images and the mean over them of the best-threshold F1 (each image at
    its dataset's best threshold) and of the shared-threshold F1."""
    summary = []
    banded = [r for r in rows if r.band and np.isfinite(r.f1_best)]
    keys = dict.fromkeys([(r.family, r.band, r.method) for r in banded] + [(r.family, ALL, r.method) for r in banded])
    for family, band, method in keys:
        chosen = [r for r in banded if (r.family, r.method) == (family, method) and band in (ALL, r.band)]
        summary.append(
            {
                "family": family,
                "band": band,
                "method": method,
                "images": len(chosen),
                "f1_best": float(np.mean([r.f1_best for r in chosen])),
                "f1_shared": float(np.mean([r.f1_shared for r in chosen])),
            }
        )
    return summary


def band_table(summary: Sequence[dict]) -> str:
    """Markdown tables of :func:`band_summary`: one row per family and band (with its image count),
    one column per method; best-threshold F1, then F1 at the threshold shared by every dataset."""
    methods = list(dict.fromkeys(s["method"] for s in summary))
    by = {(s["family"], s["band"], s["method"]): s for s in summary}
    groups = list(dict.fromkeys((s["family"], s["band"]) for s in summary))
    tables = []
    for field, title in (("f1_best", "best threshold per dataset"), ("f1_shared", "one threshold shared by all")):
        lines = [
            f"F1 at the {title} (mean over the images)",
            "",
            "| family | size band | images | " + " | ".join(methods) + " |",
            "|" + "---|" * (3 + len(methods)),
        ]
        for family, band in groups:
            cells = [f"{by[(family, band, m)][field]:.3f}" if (family, band, m) in by else "-" for m in methods]
            count = next(by[(family, band, m)]["images"] for m in methods if (family, band, m) in by)
            lines.append(f"| {family} | {band} | {count} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


@dataclass(frozen=True)
class Spread:
    """A figure over the draws of a suite: its mean and 95% interval (Student's t over the draws;
    no interval for one draw)."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        from scipy import stats

        v = np.asarray(values, dtype=float)
        mean = float(v.mean())
        if len(v) < 2:
            return cls(mean, float("nan"), float("nan"))
        half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
        return cls(mean, mean - half, mean + half)


def summarise_draws(rows: Sequence[Row], reference: str = REFERENCE) -> list[dict]:
    """Per family (and ``all``) and method, over the draws in ``rows``: best-threshold and
    shared-threshold F1 (:class:`Spread` of the per-draw :func:`summarise` figures) and their
    paired differences to ``reference`` on the same draws (keys ``f1_best_diff``,
    ``f1_shared_diff``), with the per-draw values (``per_draw``: draw -> (f1_best, f1_shared))."""
    draws = sorted({r.draw for r in rows})
    by_draw = {d: {(s["family"], s["method"]): s for s in summarise([r for r in rows if r.draw == d])} for d in draws}
    summary = []
    for family, method in by_draw[draws[0]]:
        entry: dict = {"family": family, "method": method}
        values = {field: [by_draw[d][(family, method)][field][0] for d in draws] for field in ("f1_best", "f1_shared")}
        for field, per_draw in values.items():
            entry[field] = Spread.of(per_draw)
            if (family, reference) in by_draw[draws[0]]:
                references = [by_draw[d][(family, reference)][field][0] for d in draws]
                entry[field + "_diff"] = Spread.of(np.subtract(per_draw, references))
        entry["per_draw"] = dict(zip(draws, zip(values["f1_best"], values["f1_shared"])))
        summary.append(entry)
    return summary


def draws_table(summary: Sequence[dict], reference: str = REFERENCE) -> str:
    """A Markdown table of :func:`summarise_draws`: per method, best-threshold F1 per family and the
    shared-threshold F1 (mean over draws), each with its difference to ``reference`` and 95% interval."""
    families = list(dict.fromkeys(s["family"] for s in summary))
    by = {(s["family"], s["method"]): s for s in summary}
    methods = [m for m in dict.fromkeys(s["method"] for s in summary) if np.isfinite(by[(ALL, m)]["f1_best"].mean)]

    def cell(entry: dict, field: str) -> str:
        spread, diff = entry[field], entry.get(field + "_diff")
        if entry["method"] == reference or diff is None or not np.isfinite(diff.low):
            return f"{spread.mean:.3f}"
        return f"{spread.mean:.3f} ({diff.mean:+.3f}, {diff.low:+.3f}..{diff.high:+.3f})"

    head = ["method", *(f"F1 {f}" for f in families), "F1 shared threshold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [cell(by[(f, m)], "f1_best") for f in families] + [cell(by[(ALL, m)], "f1_shared")]
        lines.append("| " + " | ".join([m, *cells]) + " |")
    draws = len(summary[0]["per_draw"])
    note = (
        f"\nMeans over {draws} draws of the suite; in brackets the paired difference to {reference} "
        "and its 95% interval (Student's t over the draws).\n"
    )
    return "\n".join(lines) + "\n" + note


def write_draws(rows: Sequence[Row], out_dir: Path, reference: str = REFERENCE) -> list[Path]:
    """draws.csv (one line per draw, family and method: best- and shared-threshold F1) and draws.md
    (:func:`draws_table`)."""
    summary = summarise_draws(rows, reference)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, markdown = out_dir / "draws.csv", out_dir / "draws.md"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["draw", "family", "method", "f1_best", "f1_shared"])
        for s in summary:
            for draw, (best, shared) in s["per_draw"].items():
                if np.isfinite(best):  # the detection methods
                    writer.writerow([draw, s["family"], s["method"], best, shared])
    markdown.write_text(draws_table(summary, reference), encoding="utf-8")
    return [table, markdown]


def write_csv(rows: Sequence[Row], summary: Sequence[dict], out_dir: Path) -> list[Path]:
    """results.csv (one line per image and method), summary.csv, summary.md (:func:`markdown_table`),
    datasets.md (:func:`dataset_table`) and, where images have size bands, bands.md (:func:`band_table`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results, table = out_dir / "results.csv", out_dir / "summary.csv"
    with results.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "family",
                "method",
                "gain_mean",
                "gain_std",
                "fold_mean",
                "fold_std",
                "f1_fixed_mean",
                "f1_fixed_std",
                "f1_best_mean",
                "f1_best_std",
                "f1_shared_mean",
                "f1_shared_std",
            ]
        )
        for s in summary:
            writer.writerow(
                [s["family"], s["method"], *s["gain"], *s["fold"], *s["f1_fixed"], *s["f1_best"], *s["f1_shared"]]
            )
    markdown = out_dir / "summary.md"
    markdown.write_text(markdown_table(summary), encoding="utf-8")
    paths = [results, table, markdown]
    paths.append(out_dir / "datasets.md")
    paths[-1].write_text(dataset_table(rows), encoding="utf-8")
    bands = band_summary(rows)
    if bands:
        paths.append(out_dir / "bands.md")
        paths[-1].write_text(band_table(bands), encoding="utf-8")
    return paths


def write_figures(items: Sequence[EvalImage], rows: Sequence[Row], outputs: dict, out_dir: Path) -> list[Path]:
    """PNG figures: panels with detections, histograms with cumulative curves, F1 distributions."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    out_dir.mkdir(parents=True, exist_ok=True)
    detection = list(dict.fromkeys(r.method for r in rows if np.isfinite(r.f1_best)))
    datasets = list(dict.fromkeys(i.dataset for i in items))
    firsts = [next(i for i in items if i.dataset == d) for d in datasets]
    threshold = {(r.dataset, r.method): r.threshold for r in rows}
    paths = []

    fig = Figure(figsize=(3 * len(detection), 3 * len(firsts)))
    axes = fig.subplots(len(firsts), len(detection), squeeze=False)
    for row_axes, item in zip(axes, firsts):
        for ax, method in zip(row_axes, detection):
            image = outputs[(item.dataset, item.name, method)]
            found = metrics.detect_blobs(image, item.radius, threshold[(item.dataset, method)])
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.plot(item.centroids[:, 1], item.centroids[:, 0], "g.", markersize=3)
            for y, x in found:
                ax.add_patch(Circle((x, y), item.radius, color="r", fill=False, linewidth=0.6))
            ax.set_title(f"{item.dataset}: {method}", fontsize=8)
            ax.axis("off")
    fig.suptitle("green: ground truth, red: blob_log detections (best threshold)", fontsize=9)
    paths.append(_save(fig, out_dir / "panels.png"))

    methods = list(dict.fromkeys(r.method for r in rows))
    fig = Figure(figsize=(2.6 * len(methods), 2.6))
    axes = fig.subplots(1, len(methods), squeeze=False)
    for ax, method in zip(axes[0], methods):
        values = np.concatenate([outputs[(i.dataset, i.name, method)].ravel() for i in items])
        ax.hist(values, bins=64, range=(0, 1), color="0.5", density=True)
        twin = ax.twinx()
        ordered = np.sort(values)
        twin.plot(ordered, np.linspace(0, 1, len(ordered)), "b-", linewidth=1)
        twin.set_ylim(0, 1)
        ax.set_title(method, fontsize=8)
        ax.set_yticks([])
    fig.suptitle("pixel values in [0, 1]: histogram and cumulative curve", fontsize=9)
    paths.append(_save(fig, out_dir / "histograms.png"))

    fig = Figure(figsize=(1.6 * len(detection) + 1, 3))
    ax = fig.subplots()
    ax.boxplot([[r.f1_best for r in rows if r.method == m] for m in detection], tick_labels=detection)
    ax.set_ylabel("F1 (best threshold per dataset)")
    ax.set_ylim(0, 1)
    paths.append(_save(fig, out_dir / "f1.png"))
    return paths


def _save(fig, path: Path) -> Path:
    """Lay out and write a :class:`matplotlib.figure.Figure` (no pyplot: the caller's backend is left alone)."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
