"""``nunet filter`` (one image) and ``nunet batch`` / ``nunet-batch`` (a folder, or OME-Zarr on a dask cluster)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from nunet.batch.plan import DEFAULT_PATTERNS, FileRecord, OutputFormat
from nunet.cli.app import (
    AugmentOpt,
    AxesOpt,
    BatchOpt,
    ChannelOpt,
    DeviceOpt,
    DtypeOpt,
    InvertOpt,
    ModelOpt,
    NgffOpt,
    OverwriteOpt,
    PrecisionOpt,
    RadiusOpt,
    StrengthOpt,
    TileOpt,
    VerboseOpt,
    err,
    exit_on_error,
    progress_bar,
    show_warning,
)
from nunet.errors import OptionWarning, UsageError
from nunet.options import DEFAULT_MODEL, SETTING_NAMES, FilterSettings, OutputDtype, Precision


def _settings(**options) -> FilterSettings:
    """The command's FilterSettings from its options (keywords of :class:`FilterSettings`), checked
    against the hardware; a bad option exits 2, a doubtful one (bf16 emulated on this CPU) is printed
    as a warning."""
    from nunet.api import resolve_settings

    with exit_on_error(2), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OptionWarning)
        settings = resolve_settings(FilterSettings(**options))
    for warning in caught:
        show_warning(warning.message, warning.category, warning.filename, warning.lineno)
    return settings


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
    precision: PrecisionOpt = Precision.FP32,
    invert: InvertOpt = False,
    augment: AugmentOpt = False,
    radius: RadiusOpt = "auto",
    dtype: DtypeOpt = OutputDtype.FLOAT32,
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
    from nunet.batch.run import filter_file
    from nunet.registry.models import load_model

    settings = _settings(**{k: v for k, v in locals().items() if k in SETTING_NAMES})  # the options above
    from nunet.io import ZARR_SUFFIX

    zarr_pair = input.suffix.lower() == output.suffix.lower() == ZARR_SUFFIX
    if (workers or scheduler) and not zarr_pair:
        with exit_on_error(2):
            raise UsageError("--workers and --scheduler need a zarr input and a zarr output")
    if zarr_pair:
        _filter_zarr(input, output, settings, workers, scheduler, overwrite)
        return
    with exit_on_error(2):
        loaded = None if settings.w is not None else load_model(settings.model, settings.device)
        record = filter_file(input, output, settings, overwrite=overwrite, model=loaded, progress=True)
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
    from nunet.batch.cluster import filter_zarr

    bar = progress_bar("planes")
    task = bar.add_task("planes", total=None)
    try:
        with exit_on_error(2), bar:
            run = filter_zarr(
                input,
                output,
                settings,
                workers=workers,
                scheduler=scheduler,
                overwrite=overwrite,
                on_plane=lambda done, total: bar.update(task, completed=done, total=total),
            )
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
    precision: PrecisionOpt = Precision.FP32,
    invert: InvertOpt = False,
    augment: AugmentOpt = False,
    radius: RadiusOpt = "auto",
    dtype: DtypeOpt = OutputDtype.FLOAT32,
    overwrite: OverwriteOpt = False,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", help="Output format of the default names: .tif or .ome.zarr.")
    ] = OutputFormat.TIFF,
    ngff: NgffOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be done; write nothing.")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Write a JSON report, one record per file.")] = None,
    verbose: VerboseOpt = False,
) -> None:
    """Filter every image of a folder; keeps going past bad files and lists them at the end."""

    from nunet.batch.plan import check_report_path, write_report
    from nunet.batch.run import run_batch

    settings = _settings(**{k: v for k, v in locals().items() if k in SETTING_NAMES})  # the options above
    if report is not None:
        with exit_on_error(2):
            check_report_path(report)
    progress = progress_bar("filtering", transient=True, disable=dry_run)
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

    with exit_on_error(2), progress:
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
            output_format=output_format.value,
        )
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
