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
same modalities degraded by :mod:`nunet.data.degrade`, the annotated real images
(:mod:`nunet.data.real`) and those real images degraded. ``dsb`` is the validation split of the
2018 Data Science Bowl (:mod:`nunet.data.dsb`: acquisition kinds never trained on; reserved ids
never read), each image clean and degraded; its datasets are the acquisition kinds, and each image
also has a nucleus-size band (:func:`band_summary`).

NU-Net models are run with the ``radius`` option the evaluation is given: ``auto`` (estimated per
image, as users run them), ``off`` (at the image's own scale) or ``truth`` (each image's true
median radius). Every image of a suite comes from
evaluation seeds (:func:`nunet.data.synth.evaluation_seed`), which training never uses. Datasets are
grouped in families (``synthetic``, ``synthetic-degraded``, ``real``, ``real-degraded``); the
summary has one block per family and one over all datasets (``all``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nunet.evaluation import baselines, metrics
from nunet.evaluation.suites import EvalImage

DETECTION_METHODS = ("raw", "dog", "dog-tuned")


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


def _source(item: EvalImage) -> np.ndarray:
    """The image the classical methods see: bright nuclei (an ``invert`` item's image inverted)."""
    return 1.0 - baselines.minmax(item.image) if item.invert else item.image


def _has_mask(item: EvalImage) -> bool:
    """Whether the item's mask has both foreground and background (contrast and the ceiling need both)."""
    return bool(item.mask.any() and not item.mask.all())


def filtered(item: EvalImage, method: str, models: dict, radius: str | float = "auto") -> np.ndarray:
    """The image of ``item`` as seen by ``method``, in [0, 1]; models run with ``radius`` (``RADIUS_MODES``
    or pixels)."""
    from nunet.api import enhance

    if method == CEILING:
        return item.mask.astype(np.float32)
    if method == "raw":
        return baselines.minmax(_source(item))
    if method in baselines.CLASSICAL:
        return baselines.classical(method, _source(item), item.radius)
    size = item.radius if radius == "truth" else radius  # models run as users run them: --invert, --radius
    augment = method.endswith(AUGMENTED)
    return enhance(item.image, models[method], axes="YX", augment=augment, radius=size, invert=item.invert)


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
    from nunet.core.runtime import resolve_device
    from nunet.registry.models import load_model

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
