"""Evaluation on real fluorescence images with expert ground truth: one 2D image at two scales
and one 3D stack plane by plane.

scikit-image's bundled images include no nuclear image with ground truth (``ihc.png`` has
none), so the real-image figures use the test data that the ``stardist`` package ships: the
2018 Data Science Bowl image (BBBC038, Caicedo et al. 2019, Nature Methods) with its label mask
(``stardist/data/images/img2d.tif`` and ``mask2d.tif``, 512x512, 125 nuclei, median radius
~12 px), and a 3D stack of nuclei with its label stack (``img3d.tif`` and ``mask3d.tif``,
31x61x57 ZYX, 51 nuclei, in-plane diameter ~14 px). The wheel is fetched once from PyPI with
``pip download`` (or given with ``--wheel``); nothing of it is installed or committed.

The 2D image is evaluated as is (radius 12) and downscaled by 2 (radius 6, the nucleus size of
the synthetic training data); the stack's 31 planes (every plane holds nuclei) form one dataset
(radius 7), as ``nunet eval`` scores the synthetic 3D stacks per plane. Each runs ``nunet eval``
on every registered model with a w.

Usage: ``python benchmarks/eval_real.py OUT_DIR [--wheel stardist-*.whl]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL_REQUIREMENT = "stardist==0.9.2"
MEMBERS = {name: f"stardist/data/images/{name}.tif" for name in ("img2d", "mask2d", "img3d", "mask3d")}


def fetch_wheel(folder: Path) -> Path:
    """Download the stardist wheel (no dependencies, nothing installed) into ``folder``."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                    "-d", str(folder), WHEEL_REQUIREMENT], check=True)
    return next(folder.glob("stardist-*.whl"))


def prepare(wheel: Path, root: Path) -> dict[str, tuple[Path, Path, float]]:
    """Write each dataset's 2D planes and label planes; return {name: (images dir, masks dir, radius)}.

    Datasets: the 2D image at scale 1 and 1/2, and the 3D stack as one file per plane.
    """
    import tifffile

    with zipfile.ZipFile(wheel) as zf:
        data = {name: tifffile.imread(zf.open(member)) for name, member in MEMBERS.items()}
    image, labels = data["img2d"].astype(np.float32), data["mask2d"].astype(np.int32)
    stack, stack_labels = data["img3d"].astype(np.float32), data["mask3d"].astype(np.int32)
    sets = {"dsb2018": ({"dsb2018": (image, labels)}, 12.0),
            "dsb2018-half": ({"dsb2018-half": (image.reshape(256, 2, 256, 2).mean(axis=(1, 3)),
                                               labels[::2, ::2])}, 6.0),
            "stardist-3d": ({f"z{z:02d}": (stack[z], stack_labels[z]) for z in range(len(stack))
                             if stack_labels[z].any()}, 7.0)}
    out = {}
    for name, (planes, radius) in sets.items():
        for stem, (img, lab) in planes.items():
            for kind, array in (("images", img), ("masks", lab)):
                (root / name / kind).mkdir(parents=True, exist_ok=True)
                tifffile.imwrite(root / name / kind / f"{stem}.tif", array)
        out[name] = (root / name / "images", root / name / "masks", radius)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--wheel", type=Path, help="a stardist wheel already at hand")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        for name, (images, masks, radius) in prepare(wheel, Path(tmp)).items():
            print(f"\n{name} (radius {radius:g} px)", flush=True)
            subprocess.run([sys.executable, "-m", "nunet", "eval", str(args.out_dir / name), "--images", str(images),
                            "--masks", str(masks), "--radius", str(radius)], check=True)


if __name__ == "__main__":
    main()
