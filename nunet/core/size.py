"""Object size: estimate the typical nucleus radius of an image, and resize planes to a radius.

NU-Net models are trained on nuclei of one size (the radius their metadata records, ``radius``;
about 7 px for every shipped model); nuclei much larger come out as rings. As with Cellpose's
``diameter``, nunet shrinks an image of larger nuclei so they have that radius, filters, and
resizes the output back to the exact input shape (:func:`zoom_factor`, :func:`resize_planes`).

The estimate (:func:`estimate_radius`) is classical scale space: the scale-normalised
Laplacian of Gaussian, ``-sigma^2 LoG``, peaks at the centre of a disc of radius r at sigma =
r / sqrt(2) whatever r, so the local maxima over (y, x, sigma) of a plane's response are its
blobs and their sizes. Octaves of a pyramid keep large scales cheap. The plane is first smoothed
by a Gaussian whose width follows its pixel noise (:func:`smoothing`: 1 px on clean planes, up to
3 px on noisy ones, where noise otherwise makes small blobs), and each blob's scale is corrected
for that smoothing (a blob of scale sigma seen through a smoothing s peaks at sqrt(sigma^2 + s^2)).
The blobs whose response is at least 0.3 of the strongest ones' (the 99.9th percentile of the
responses) vote, each by its response times its radius (so the many small maxima of noise, debris
and texture do not outvote the nuclei: :data:`BRIGHT_VOTES`). With ``invert`` (dark nuclei:
brightfield, stained tissue, where the cells absorb too) a blob whose disc holds the centre of a
stronger one does not vote (:func:`suppressed`, the overlap pruning of blob detectors: a cell around
its darker nucleus), and the votes lean less on the radius (:data:`DARK_VOTES`). The estimate is
the weighted median of the voters' radii, sigma x sqrt(2). Tuned on the DSB training kinds,
clean and degraded (docs/experiments/18, 20), measured on the validation kinds and the synthetic
suite.

Where the filter's model draws each nucleus over its mask (``nunet.api.draws_masks``: the
strongest members of the shipped families), the estimate takes a second look, as Cellpose reads
its size off its own masks: the sampled planes are filtered at the scale-space estimate and the
radius is read off the output (:func:`output_radius`). Those models were trained to draw each
annotated nucleus as a cone that is at least 0.5 over its whole mask and 0 outside, so the
output's area per nucleus measures the nucleus as annotators outline it, dim rims included,
where the scale space sees the bright body, or a nucleus with the cell around it
(docs/experiments/28).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nunet.options import Radius

#: Scales per octave, in the octave's own pixels (six, and one beyond each end: the local maxima of the middle six).
OCTAVE_SIGMAS = 2.0 ** (np.arange(-1, 7) / 6)


@dataclass(frozen=True)
class Votes:
    """Which blobs vote, and how much: those whose response is at least ``keep`` of the strongest
    ones' (the 99.9th percentile), each by its response times its radius to the power ``power``;
    with ``suppress``, not a blob whose disc holds the centre of a stronger one (:func:`suppressed`)."""

    keep: float
    power: float
    suppress: bool


#: Bright nuclei (fluorescence): the nuclei are the blobs; radius-weighted votes.
BRIGHT_VOTES = Votes(keep=0.3, power=1.0, suppress=False)
#: Dark nuclei (``invert``: brightfield, stained tissue): the cells or tissue around them absorb too and
#: make larger, weaker blobs that hold a nucleus; they do not vote (docs/experiments/20).
DARK_VOTES = Votes(keep=0.5, power=0.5, suppress=True)
#: Gaussian smoothing (px) of the plane before the scale space: ``NOISE_SMOOTHING`` x its noise
#: (:func:`noise_level`, on 0..1), within ``SMOOTH_RANGE``: pixel noise makes no blobs.
NOISE_SMOOTHING = 80.0
SMOOTH_RANGE = (1.0, 3.0)
#: The radius range the estimate covers (px).
RADIUS_RANGE = (1.5, 64.0)
#: The second look (:func:`output_radius`): a nucleus is where the output is over ``OUTPUT_LEVEL`` (half
#: the trained cones' 0.5 at a mask's edge), and a peak of the output over ``PEAK_LEVEL`` is one nucleus.
OUTPUT_LEVEL = 0.25
PEAK_LEVEL = 0.5

#: A function that filters planes ``(P, H, W)`` for nuclei of a radius (px) and returns the output at
#: the planes' shape: the model's side of the estimate's second look.
Look = Callable[[np.ndarray, float], np.ndarray]


def _downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Block means over ``factor`` x ``factor`` pixels (the bottom and right remainders dropped)."""
    if factor == 1:
        return x
    h, w = (n // factor * factor for n in x.shape)
    return x[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def blobs(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scale-space blobs of a plane normalised to 0..1 (bright blobs): their responses, radii
    (px of the plane) and centres ``(N, 2)`` (y, x in px of the plane)."""
    from scipy import ndimage as ndi

    responses, radii, centres = [], [], []
    octave = 0
    while True:
        factor = 2**octave
        x = _downsample(plane, factor)
        if min(x.shape) < 16 or OCTAVE_SIGMAS[1] * factor * np.sqrt(2) > RADIUS_RANGE[1]:
            break
        stack = np.stack([-(s**2) * ndi.gaussian_laplace(x, s) for s in OCTAVE_SIGMAS])
        peaks = (stack == ndi.maximum_filter(stack, size=3, mode="nearest")) & (stack > 0)
        peaks[[0, -1]] = False
        scales, rows, cols = np.nonzero(peaks)
        responses.append(stack[peaks])
        radii.append(OCTAVE_SIGMAS[scales] * factor * np.sqrt(2))
        centres.append((np.stack([rows, cols], axis=1) + 0.5) * factor)
        octave += 1
    if not responses:
        return np.zeros(0), np.zeros(0), np.zeros((0, 2))
    return np.concatenate(responses), np.concatenate(radii), np.concatenate(centres)


def suppressed(responses: np.ndarray, radii: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Which blobs hold within their radius the centre of a stronger blob (boolean mask): they do not vote."""
    from scipy.spatial import cKDTree

    tree = cKDTree(centres)
    return np.array(
        [
            any(responses[j] > response for j in tree.query_ball_point(centre, radius))
            for response, radius, centre in zip(responses, radii, centres)
        ],
        dtype=bool,
    )


def estimate_radius(
    planes: np.ndarray, invert: bool = False, max_planes: int = 4, look: Look | None = None
) -> float | None:
    """The typical nucleus radius (px) of a stack of planes ``(P, H, W)`` (one estimate for all of
    them, from at most ``max_planes`` spread evenly); None where no blob stands out (a flat plane).

    Each plane is normalised to its 0.1 / 99.9 percentiles (inverted with ``invert``: dark nuclei).
    With ``look``, the sampled planes are then filtered at that estimate and the radius is read off
    the output (:func:`output_radius`; the scale-space estimate where the output holds no nucleus)."""
    picked = np.asarray(planes)[sample_indices(len(planes), max_planes)]
    first = scale_space_radius(picked, invert)
    if first is None or look is None:
        return first
    second = output_radius(look(picked, first), first)
    return first if second is None else second


def scale_space_radius(planes: np.ndarray, invert: bool = False) -> float | None:
    """The scale-space estimate (module docstring) over every plane of ``planes`` ``(P, H, W)``."""
    from scipy import ndimage as ndi

    from nunet.core.preprocess import normalise_plane

    found = []
    for plane in planes:
        data = plane if plane.dtype == np.float64 else plane.astype(np.float32)  # float64: its range kept
        smooth = smoothing(normalise_plane(data) / 255.0)
        x = normalise_plane(ndi.gaussian_filter(data, smooth)) / 255.0
        response, seen, centres = blobs(1.0 - x if invert else x)
        radii = np.sqrt(2.0) * np.sqrt(np.clip(seen**2 / 2.0 - smooth**2, 0.25, None))  # smoothing removed
        found.append((response, radii, centres))
    responses = np.concatenate([response for response, _, _ in found])
    if not len(responses) or not responses.max() > 0:
        return None
    rule = DARK_VOTES if invert else BRIGHT_VOTES
    floor = rule.keep * np.percentile(responses, 99.9)
    voters = []
    for response, radii, centres in found:
        vote = response >= floor
        if rule.suppress:
            vote[vote] = ~suppressed(response[vote], radii[vote], centres[vote])
        voters.append((radii[vote], response[vote]))
    radii = np.concatenate([r for r, _ in voters])
    weights = np.concatenate([w for _, w in voters]) * radii**rule.power
    radius = weighted_median(radii, weights)
    return radius if RADIUS_RANGE[0] <= radius <= RADIUS_RANGE[1] else None


def output_radius(outputs: np.ndarray, first: float) -> float | None:
    """The nucleus radius (px) read off filtered planes ``(P, H, W)`` in [0, 1], filtered for nuclei
    of ``first`` px; None where no nucleus stands out.

    Each connected region over :data:`OUTPUT_LEVEL` that reaches :data:`PEAK_LEVEL` and covers at
    least a disc of the smallest radius holds ``n`` nuclei, its peaks over :data:`PEAK_LEVEL` (local
    maxima within ``first`` px; at least one), each of the radius of a disc of the region's area
    over ``n``. The estimate is their median weighted by the square root of the region's area: the
    many small regions that noise and debris leave in a degraded output do not outvote the nuclei,
    nor do a few large clumps outvote the rest."""
    from scipy import ndimage as ndi

    radii, weights = [], []
    window = max(3, int(round(first)))
    for out in np.asarray(outputs, np.float32):
        regions, count = ndi.label(out > OUTPUT_LEVEL)
        if not count:
            continue
        index = np.arange(1, count + 1)
        area = ndi.sum_labels(np.ones_like(out), regions, index)
        peaks = (out == ndi.maximum_filter(out, size=window)) & (out > PEAK_LEVEL)
        nuclei = np.maximum(ndi.sum_labels(peaks, regions, index), 1)
        kept = (area >= np.pi * RADIUS_RANGE[0] ** 2) & (ndi.maximum(out, regions, index) >= PEAK_LEVEL)
        radii.append(np.sqrt(area[kept] / (np.pi * nuclei[kept])))
        weights.append(np.sqrt(area[kept]))
    if not radii or not sum(len(r) for r in radii):
        return None
    radius = weighted_median(np.concatenate(radii), np.concatenate(weights))
    return radius if RADIUS_RANGE[0] <= radius <= RADIUS_RANGE[1] else None


def noise_level(plane: np.ndarray) -> float:
    """Pixel noise of a plane: the robust standard deviation (1.4826 x the median absolute value) of
    its difference to itself blurred by 1 px."""
    from scipy import ndimage as ndi

    return float(1.4826 * np.median(np.abs(plane - ndi.gaussian_filter(plane, 1.0))))


def smoothing(plane: np.ndarray) -> float:
    """The Gaussian (px) that smooths a plane normalised to 0..1 before its scale space: its noise
    times ``NOISE_SMOOTHING``, within ``SMOOTH_RANGE``."""
    return float(np.clip(NOISE_SMOOTHING * noise_level(plane), *SMOOTH_RANGE))


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value at which the cumulative weight (values in increasing order) reaches half the total."""
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


#: The radius the shipped models were trained for (px), for model files whose metadata records none.
TRAINED_RADIUS = 7.0
#: No resize while the zoom factor is within this of 1 (the estimate's own steps are 12%).
TOLERANCE = 0.15
#: The zoom factor's bounds: at most 8x smaller (nuclei of 56 px), never larger. The models were trained on
#: nuclei down to ~2.5 px (synthetic radii 4-9 px rescaled 0.5-2x), and enlarging planes whose estimate is
#: small measured worse: on noisy planes the estimate errs low, and small planes of stacks got blown up
#: (docs/experiments/, eleventh session).
ZOOM_RANGE = (1 / 8, 1.0)


def image_radius(
    radius: "str | float | Radius | None",
    planes: "np.ndarray | Callable[[], np.ndarray]",
    invert: bool = False,
    pixel_width: float = 1.0,
    unit: str | None = None,
    look: Look | None = None,
) -> float | None:
    """The nucleus radius of an image in pixels, as the ``radius`` option asks: given (a length is
    converted with the calibration), estimated from ``planes`` (``auto``, with the second ``look``
    where one is given; None where no blob stands out), or None (``off``). ``planes`` may be a
    function that reads them, called only to estimate."""
    spec = Radius.parse(radius)
    if spec.off:
        return None
    given = spec.pixels(pixel_width, unit)
    if given is not None:
        return given
    return estimate_radius(planes() if callable(planes) else planes, invert, look=look)


def sample_indices(count: int, most: int = 4) -> list[int]:
    """At most ``most`` indices of ``count`` planes, spread evenly (the planes an estimate reads)."""
    return sorted({int(i) for i in np.linspace(0, count - 1, min(most, count)).round()})


def zoom_factor(radius: float | None, trained: float) -> float:
    """The zoom that gives nuclei of ``radius`` px the ``trained`` radius: 1 for an unknown radius, one
    within :data:`TOLERANCE` or a smaller one, else bounded by :data:`ZOOM_RANGE` (only shrinking)."""
    if radius is None:
        return 1.0
    factor = trained / radius
    if abs(factor - 1.0) <= TOLERANCE:
        return 1.0
    return float(np.clip(factor, *ZOOM_RANGE))


@dataclass(frozen=True)
class Zoom:
    """The radius resize as a before/after pair (as csbdeep's ``Resizer``): :meth:`before` shrinks
    planes of ``shape`` by ``factor`` so their nuclei have the model's radius, :meth:`after` brings
    the output back to ``shape``, clipped to [0, 1]. A factor of 1 leaves both untouched."""

    shape: tuple[int, int]
    factor: float = 1.0

    def before(self, planes: np.ndarray) -> np.ndarray:
        return planes if self.factor == 1.0 else resize_planes(planes, zoomed_shape(self.shape, self.factor))

    def after(self, out: np.ndarray) -> np.ndarray:
        return out if self.factor == 1.0 else np.clip(resize_planes(out, self.shape), 0.0, 1.0)


def zoomed_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """A plane's shape zoomed by ``factor`` (at least 8 px a side)."""
    return tuple(max(8, int(round(n * factor))) for n in shape)


def resize_planes(planes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Planes ``(P, H, W)`` resized to ``(P, *shape)`` float32: bilinear, with a Gaussian
    anti-aliasing filter when shrinking (scikit-image's ``resize``)."""
    from skimage.transform import resize

    planes = np.asarray(planes, np.float32)
    if planes.shape[1:] == tuple(shape):
        return planes
    shrink = shape[0] < planes.shape[1] or shape[1] < planes.shape[2]
    out = np.empty((len(planes), *shape), np.float32)
    for i, plane in enumerate(planes):
        out[i] = resize(plane, shape, order=1, anti_aliasing=shrink, preserve_range=True)
    return out
