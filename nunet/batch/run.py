"""Filtering files and folders: each file claimed, read, filtered and written atomically, with a record.

A batch never stops at a bad file: each file gets a :class:`~nunet.batch.plan.FileRecord` whose
status is ``ok``, ``skipped`` (an existing nunet output, or claimed by another run), ``dry-run`` or
``failed`` (with a one-line error naming the file). Inputs are only read; outputs are written to a
temporary ``.part`` file and renamed, so an interrupted batch leaves no partial output and a rerun
resumes where it stopped. On Ctrl-C (SIGINT) the batch stops after the file in progress and returns
what was done. The plan is :mod:`nunet.batch.plan`'s, the claims :mod:`nunet.batch.claims`'s.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from nunet.batch.claims import Claim, claim, claimed
from nunet.batch.plan import DEFAULT_PATTERNS, FileRecord, Job, check_writable_folder, is_zarr_store, plan_batch
from nunet.errors import NUNetError, UsageError
from nunet.options import FilterSettings


@dataclass
class BatchResult:
    """The records of a batch, in input order, and whether it was interrupted (Ctrl-C)."""

    records: list[FileRecord]
    interrupted: bool = False


@contextmanager
def _stage(record: FileRecord) -> Iterator[None]:
    """Add the block's time to the record and turn any error into a failed record naming the file."""
    start = time.perf_counter()
    try:
        yield
    except NUNetError as exc:
        message = str(exc)
        _fail(record, message if record.input in message else f"{record.input}: {message}")
    except Exception as exc:  # a batch must go on past any bad file
        _fail(record, f"{record.input}: {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        record.seconds = round(record.seconds + time.perf_counter() - start, 4)


def _read(job: Job, settings: FilterSettings, overwrite: bool, dry_run: bool):
    from nunet.io import read_image

    record, image = FileRecord(str(job.input), str(job.output), "ok"), None
    with _stage(record):
        if job.output.exists() and not overwrite:
            record.status = "skipped"
        elif dry_run:
            record.status = "dry-run"
        else:
            image = read_image(job.input, settings.axes)
            record.shape, record.axes = list(image.data.shape), image.axes
    return record, image


def _filter(record: FileRecord, image, settings: FilterSettings, model, progress: bool):
    from nunet.api import filter_image_sized
    from nunet.io import convert_dtype, with_data

    result = None
    if image is not None:
        with _stage(record):
            fixed = settings if model is None else replace(settings, model=model)
            result, record.radius = filter_image_sized(image, fixed, progress=progress)
            record.model = model_tag(settings, model)
            result = with_data(result, convert_dtype(result.data, settings.dtype), result.axes)
    return result if record.status == "ok" else None


def model_tag(settings: FilterSettings, model) -> str:
    """The model as output names (``{model}``) and the report give it: the loaded model's name, the
    settings' model where none is loaded (a dry run), or ``wN`` for a family blend."""
    if settings.w is not None:
        return f"w{settings.w:g}"
    return model.name if model is not None else str(settings.model)


def _write(record: FileRecord, result, output: Path, overwrite: bool, ngff: str | None) -> FileRecord:
    from nunet.io import write_image

    if result is not None:
        with _stage(record):
            write_image(result, output, overwrite=overwrite, ngff=ngff)
    return record


def _fail(record: FileRecord, message: str) -> None:
    record.status = "failed"
    record.error = message
    record.traceback = traceback.format_exc()


def filter_file(
    input_path: Path,
    output: Path,
    settings: FilterSettings,
    *,
    overwrite: bool = False,
    model=None,
    progress: bool = False,
) -> FileRecord:
    """Read, filter and write one file; returns its record (a bad image is a failed record).

    Raises
    ------
    UsageError
        Before reading, when the input is missing, the output is a folder or the input itself, an
        existing output was not written by nunet, or the output folder cannot be written.
    """
    from nunet.api import resolve_settings
    from nunet.io import ZARR_SUFFIX, check_output_name, written_by_nunet

    settings = resolve_settings(settings)  # a no-op for settings already resolved (run_batch's)
    if not (input_path.is_file() or is_zarr_store(input_path)):
        raise UsageError(f"{input_path}: no such file")
    if output.is_dir() and output.suffix.lower() != ZARR_SUFFIX:
        raise UsageError(f"{output}: is a folder; give an output file name (or use nunet batch for folders)")
    try:
        check_output_name(output)
    except NUNetError as exc:
        raise UsageError(str(exc)) from None
    if output.resolve() == input_path.resolve():
        raise UsageError(f"{output}: output would overwrite the input; choose another name or folder")
    if output.exists() and overwrite and not written_by_nunet(output):
        raise UsageError(f"{output}: exists and was not written by nunet; it is never replaced")
    check_writable_folder(output.parent)
    job = Job(input_path, output)
    with claimed(output) as held:
        if held is None:
            return _held_elsewhere(job)
        record, image = _read(job, settings, overwrite, dry_run=False)
        if image is not None and settings.channel is not None:  # one file: a bad channel is a usage error
            from nunet.core.preprocess import channel_picks

            try:
                channel_picks(image.axes, image.data.shape, settings.channel)
            except NUNetError as exc:
                raise UsageError(f"{input_path}: --channel: {exc}") from None
        return _write(record, _filter(record, image, settings, model, progress), output, overwrite, settings.ngff)


def _held_elsewhere(job: Job) -> FileRecord:
    """The record of a job whose output another live run holds."""
    return FileRecord(
        str(job.input), str(job.output), "skipped", error="claimed by another nunet run writing into this folder"
    )


def run_batch(
    input_dir: Path,
    output_dir: Path,
    settings: FilterSettings,
    *,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    recursive: bool = False,
    template: str | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    on_start: Callable[[int], None] | None = None,
    on_file: Callable[[FileRecord], None] | None = None,
    output_format: str = "tiff",
) -> BatchResult:
    """Filter every matching file of ``input_dir`` into ``output_dir``.

    Parameters
    ----------
    input_dir, output_dir : Path
        Folders; ``output_dir`` may equal or lie inside ``input_dir``.
    settings : FilterSettings
        Per-image settings; the model is loaded once for the whole batch.
    patterns : sequence of str
        Glob patterns on file names (case-insensitive).
    recursive : bool
        Descend into sub-folders and mirror them in ``output_dir``.
    template : str, optional
        Output name template (see :func:`output_path`). Default ``{stem}.tif``, or
        ``{stem}_nunet.tif`` when the output folder is the input folder (``.ome.zarr`` instead of
        ``.tif`` with ``output_format="zarr"``).
    overwrite : bool
        Replace existing outputs (only files nunet wrote; see the module docstring).
    dry_run : bool
        Plan only: records say ``dry-run`` or ``skipped``; nothing is read or written.
    on_start, on_file : callable, optional
        Called with the number of inputs, then with each finished record.
    output_format : str
        ``tiff`` or ``zarr`` (OME-Zarr): the file type of the default name templates.

    Raises
    ------
    UsageError, NUNetError
        When the batch cannot start (see :func:`plan_batch`), or the model cannot be loaded.
    """
    from nunet.api import resolve_settings
    from nunet.registry.models import load_model, resolve_model

    settings = resolve_settings(settings)
    resolve_model(settings.model)
    model = None if dry_run or settings.w is not None else load_model(settings.model, settings.device)
    jobs = plan_batch(
        input_dir,
        output_dir,
        patterns=patterns,
        recursive=recursive,
        template=template,
        model_tag=model_tag(settings, model),
        check_folder=not dry_run,
        output_format=output_format,
    )
    if on_start:
        on_start(len(jobs))
    return _pipeline(jobs, settings, model, overwrite, dry_run, on_file)


def _pipeline(
    jobs: list[Job],
    settings: FilterSettings,
    model,
    overwrite: bool,
    dry_run: bool,
    on_file: Callable[[FileRecord], None] | None,
) -> BatchResult:
    """Filter ``jobs`` in order, reading ahead and writing behind.

    A reader thread claims and loads the next file while the current one is filtered, and a writer
    thread saves the previous result, so a folder runs at the network's speed rather than network +
    I/O. At most one file is read ahead and two wait to be written, which bounds memory. Claims are
    released when the batch ends, however it ends.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    held: list[Claim] = []

    def read(job: Job):
        if not dry_run:
            taken = claim(job.output)
            if taken is None:
                return _held_elsewhere(job), None
            held.append(taken)
        return _read(job, settings, overwrite, dry_run)

    records: list[FileRecord] = []
    writes: deque[Future] = deque()
    interrupted = False

    def finish(future: Future) -> None:
        records.append(future.result())
        if on_file:
            on_file(records[-1])

    reader = ThreadPoolExecutor(1, thread_name_prefix="nunet-read")
    writer = ThreadPoolExecutor(1, thread_name_prefix="nunet-write")
    try:
        ahead = reader.submit(read, jobs[0]) if jobs else None
        for i, job in enumerate(jobs):
            record, image = ahead.result()
            ahead = reader.submit(read, jobs[i + 1]) if i + 1 < len(jobs) else None
            result = _filter(record, image, settings, model, progress=False)
            writes.append(writer.submit(_write, record, result, job.output, overwrite, settings.ngff))
            while writes and (writes[0].done() or len(writes) > 2):
                finish(writes.popleft())
    except KeyboardInterrupt:
        interrupted = True
    finally:
        reader.shutdown(wait=True, cancel_futures=True)
        while writes:  # results already computed are written (atomically) and recorded
            finish(writes.popleft())
        writer.shutdown(wait=True)
        for taken in held:
            taken.release()
    return BatchResult(records, interrupted)
