"""Regenerate the sample images and the untrained demo model shipped in the repository.

Run from the repository root: ``python samples/make_samples.py``. Seeded: the same files
come out every time (up to library versions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def synthetic_nuclei(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """A TZYX uint16 time-lapse of drifting Gaussian nuclei on uneven background with noise."""
    rng = np.random.default_rng(seed)
    t, z, h, w = shape
    n = 25
    centres = rng.uniform([0, 0, 0], [z, h, w], size=(n, 3))
    radii = rng.uniform(4, 8, size=n)
    brightness = rng.uniform(300, 1200, size=n)
    drift = rng.normal(0, 1.5, size=(n, 3)) * [0.1, 1, 1]
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(h), np.arange(w), indexing="ij")
    background = 200 + 150 * (xx / w) + 80 * np.sin(yy / h * np.pi)
    stack = np.empty(shape, dtype=np.uint16)
    for frame in range(t):
        signal = background.copy()
        for (cz, cy, cx), r, b, d in zip(centres + frame * drift, radii, brightness, drift):
            signal += b * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2) + (zz - cz) ** 2 / 2.0))
        noisy = rng.poisson(signal) + rng.normal(0, 20, size=signal.shape)
        stack[frame] = np.clip(noisy, 0, 65535).astype(np.uint16)
    return stack


def main() -> None:
    import imageio.v3 as iio
    import skimage
    import tifffile

    tifffile.imwrite(
        HERE / "synthetic_nuclei_TZYX.tif",
        synthetic_nuclei((3, 3, 128, 128)),
        imagej=True,
        resolution=(1 / 0.65, 1 / 0.65),
        metadata={"axes": "TZYX", "unit": "micron", "spacing": 2.0, "finterval": 30.0},
    )
    ihc = iio.imread(Path(skimage.__file__).parent / "data" / "ihc.png")
    iio.imwrite(HERE / "ihc_nuclei_rgb.png", ihc[:256, :256])
    tifffile.imwrite(HERE / "synthetic_nuclei_2d_uint16.tif", synthetic_nuclei((1, 1, 192, 160), seed=1)[0, 0])


if __name__ == "__main__":
    main()
