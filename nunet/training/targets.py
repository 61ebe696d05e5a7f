"""Training targets made from nucleus label images: binary, soft, dome and cone masks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from nunet.training.config import DOME_FLOOR


def soft_mask(labels: np.ndarray) -> np.ndarray:
    """The supervised target of a labelled image in 0..255: the foreground with 1-px gaps between
    touching nuclei (:func:`binary_mask`), edges softened by a Gaussian of sigma 0.75 px."""
    from scipy import ndimage as ndi

    return 255.0 * ndi.gaussian_filter(binary_mask(labels, separate_touching=True), 0.75)


def _nuclei(labels: np.ndarray) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """For each nucleus of ``labels``: its bounding box grown by 1 px (slices) and its pixels there
    (a boolean array), less the 1-px gaps :func:`binary_mask` cuts between touching nuclei."""
    from scipy import ndimage as ndi

    labels = np.asarray(labels).astype(np.int64)
    foreground = binary_mask(labels, separate_touching=True) > 0
    for label, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None:
            box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
            yield box, (labels[box] == label) & foreground[box]


def dome_mask(labels: np.ndarray, inside_frame: bool = False) -> np.ndarray:
    """A soft mask whose nuclei peak at their centres, in 0..255: inside each nucleus (with the 1-px
    gaps of :func:`binary_mask`), ``DOME_FLOOR`` at the edge rising linearly with the distance to the
    edge to 1 at the innermost pixel; edges softened as :func:`soft_mask`. A blob detector finds one
    maximum per nucleus on it, where a flat-topped mask of a large nucleus gives several.

    A nucleus cut by the image's frame peaks at the frame, as if it went on beyond it; with
    ``inside_frame`` the frame counts as the nucleus's edge, so it peaks inside its visible part,
    near the visible part's centroid (where the truth of an annotated image puts it)."""
    from scipy import ndimage as ndi

    out = np.zeros(np.shape(labels), np.float32)
    for box, inside in _nuclei(labels):
        pad = int(inside_frame)  # a ring of background around the box: the frame counts as an edge
        height, width = inside.shape
        depth = ndi.distance_transform_edt(np.pad(inside, pad))[pad : pad + height, pad : pad + width]
        if depth.max() > 0:
            out[box][inside] = DOME_FLOOR + (1.0 - DOME_FLOOR) * depth[inside] / depth.max()
    return 255.0 * ndi.gaussian_filter(out, 0.75)


def cone_mask(labels: np.ndarray) -> np.ndarray:
    """A soft mask whose nuclei peak at their centroids, in 0..255: inside each nucleus (with the 1-px
    gaps of :func:`binary_mask`), 1 at the centroid of its visible part falling linearly with the
    distance from it to ``DOME_FLOOR`` at its farthest pixel; edges softened as :func:`soft_mask`.

    Where :func:`dome_mask` rises with the distance to the edge, which is flat along the long axis
    of an elongated nucleus (a ridge a blob detector may find two maxima on), a cone has one
    maximum, at the point the truth of an annotated image names; a nucleus cut by the frame peaks
    inside its visible part."""
    from scipy import ndimage as ndi

    out = np.zeros(np.shape(labels), np.float32)
    for box, inside in _nuclei(labels):
        if not inside.any():
            continue
        rows, cols = np.nonzero(inside)
        distance = np.hypot(rows - rows.mean(), cols - cols.mean())
        out[box][inside] = DOME_FLOOR + (1.0 - DOME_FLOOR) * (1.0 - distance / max(float(distance.max()), 1.0))
    return 255.0 * ndi.gaussian_filter(out, 0.75)


def binary_mask(labels: np.ndarray, separate_touching: bool = False) -> np.ndarray:
    """Foreground (label > 0) as float32 0/1; optionally without the pixels where two labels touch.

    With ``separate_touching``, a pixel is background when one of its 8 neighbours carries another
    non-zero label, so touching objects stay apart in the binary target (a binary mask made of one
    label value is unchanged).
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels).astype(np.int64)
    foreground = labels > 0
    if separate_touching:
        largest_neighbour = ndi.grey_dilation(labels, size=3)
        smallest_neighbour = ndi.grey_erosion(np.where(foreground, labels, labels.max() + 1), size=3)
        foreground &= (largest_neighbour <= labels) & (smallest_neighbour >= labels)
    return foreground.astype(np.float32)
