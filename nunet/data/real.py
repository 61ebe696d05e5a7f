"""Annotated real fluorescence images for evaluation only (never for training).

scikit-image's bundled images include no nuclear image with ground truth, so nunet evaluates on
the test data that the ``stardist`` package ships: the 2018 Data Science Bowl image (BBBC038,
Caicedo et al. 2019, Nature Methods) with its label mask (``img2d.tif``, ``mask2d.tif``, 512x512,
125 nuclei, radius ~12 px) and a 3D stack of nuclei with its labels (``img3d.tif``,
``mask3d.tif``, 31x61x57 ZYX, 51 nuclei, in-plane radius ~7 px).

They are read, without importing stardist, from (first found): a path given by the caller (the
wheel, or a folder holding the four TIFFs); the installed ``stardist`` distribution
(``pip install --no-deps stardist==0.9.2`` installs it without its dependencies). Nothing is
downloaded here.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nunet.errors import NUNetError

WHEEL_REQUIREMENT = "stardist==0.9.2"
NAMES = ("img2d", "mask2d", "img3d", "mask3d")
MEMBER = "stardist/data/images/{}.tif"
HOW_TO_GET = (
    f"install the stardist package's data with 'pip install --no-deps {WHEEL_REQUIREMENT}' or pass its "
    f"wheel ('pip download --no-deps {WHEEL_REQUIREMENT}') or a folder of {', '.join(NAMES)}.tif"
)


@dataclass(frozen=True)
class RealImages:
    """The annotated images: a 2D image and a 3D stack, each with its labels."""

    image2d: np.ndarray
    labels2d: np.ndarray
    stack: np.ndarray
    labels3d: np.ndarray
    source: str


def _installed() -> Path | None:
    from importlib import metadata

    try:
        dist = metadata.distribution("stardist")
    except metadata.PackageNotFoundError:
        return None
    folder = Path(dist.locate_file(MEMBER.format("img2d"))).parent
    return folder if folder.is_dir() else None


def load_real_images(path: str | Path | None = None) -> RealImages:
    """Read the four TIFFs (see module docstring); a NUNetError says how to get them if absent."""
    import tifffile

    source = Path(path) if path is not None else _installed()
    if source is None:
        raise NUNetError(f"the annotated real images are not here: {HOW_TO_GET}")
    try:
        if source.is_file():
            with zipfile.ZipFile(source) as zf:
                arrays = {n: tifffile.imread(zf.open(MEMBER.format(n))) for n in NAMES}
        else:
            arrays = {n: tifffile.imread(source / f"{n}.tif") for n in NAMES}
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise NUNetError(f"{source}: not the stardist wheel or a folder of {', '.join(NAMES)}.tif ({exc})") from None
    return RealImages(
        arrays["img2d"].astype(np.float32),
        arrays["mask2d"].astype(np.int32),
        arrays["img3d"].astype(np.float32),
        arrays["mask3d"].astype(np.int32),
        str(source),
    )
