"""Filtering files and folders: output naming, skipping, atomic writes, per-file records.

A batch never stops at a bad file: each file gets a :class:`FileRecord` whose status is
``ok``, ``skipped`` (output exists, no overwrite), ``dry-run`` or ``failed`` (with a
one-line error). Inputs are only read; outputs are written to a temporary file in the
output folder and renamed, so an interrupted batch leaves no partial file and a rerun
resumes where it stopped.
"""

from __future__ import annotations

import fnmatch
import json
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nunet.errors import ImageWriteError, NUNetError
from nunet.registry import DEFAULT_MODEL

DEFAULT_PATTERNS = ("*.tif", "*.tiff", "*.png", "*.jpg")
DEFAULT_TEMPLATE = "{stem}.tif"
#: Used instead of the default template when the output folder is the input folder.
SAME_FOLDER_TEMPLATE = "{stem}_nunet.tif"


@dataclass
class FilterOptions:
    """How each image is filtered and written (the CLI's per-image options)."""

    model: str = DEFAULT_MODEL
    w: float | None = None
    axes: str | None = None
    channel: int | list[int] | None = None
    tile_size: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    invert: bool = False
    dtype: str = "float32"
    overwrite: bool = False


@dataclass
class FileRecord:
    """What happened to one input file (one entry of the JSON report)."""

    input: str
    output: str | None
    status: str
    shape: list[int] | None = None
    axes: str | None = None
    seconds: float = 0.0
    error: str | None = None
    traceback: str | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        record = asdict(self)
        record.pop("traceback")
        return record


def collect_inputs(input_dir: Path, output_dir: Path, patterns: Sequence[str] = DEFAULT_PATTERNS,
                   recursive: bool = False, template: str = DEFAULT_TEMPLATE) -> list[Path]:
    """Files of ``input_dir`` matching any pattern, sorted, never the batch's own outputs.

    Files inside ``output_dir`` (when it lies inside ``input_dir``) are excluded, and when
    both folders are the same, so are files whose name matches the output template.
    Temporary ``.part`` files and hidden files are always excluded.
    """
    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()
    candidates = input_dir.rglob("*") if recursive else input_dir.glob("*")
    own_outputs = _template_glob(template) if input_dir == output_dir else None
    found = []
    for path in candidates:
        if not path.is_file() or path.name.startswith(".") or path.suffix == ".part":
            continue
        if not any(fnmatch.fnmatch(path.name.lower(), p.lower()) for p in patterns):
            continue
        if output_dir != input_dir and output_dir in path.resolve().parents:
            continue
        if own_outputs and fnmatch.fnmatch(path.name, own_outputs):
            continue
        found.append(path)
    return sorted(found)


def _template_glob(template: str) -> str:
    """The glob matching every name a template can produce (``{stem}_nunet.tif`` -> ``*_nunet.tif``)."""
    glob = template
    for key in ("stem", "name", "model"):
        glob = glob.replace("{" + key + "}", "*")
    return glob


def output_path(input_path: Path, input_root: Path, output_dir: Path, template: str, model: str) -> Path:
    """Output file for an input: sub-folders mirrored, file name from the template.

    The template may use ``{stem}`` (input name without suffix), ``{name}`` (with suffix)
    and ``{model}`` (the model name or file stem).
    """
    rel = input_path.resolve().relative_to(input_root.resolve())
    model_tag = Path(model).stem if model.endswith(".pt") else model
    try:
        name = template.format(stem=input_path.stem, name=input_path.name, model=model_tag)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"bad name template '{template}': use {{stem}}, {{name}} or {{model}}") from exc
    return output_dir / rel.parent / name


def filter_file(input_path: Path, output: Path, options: FilterOptions, model=None,
                progress: bool = False, dry_run: bool = False) -> FileRecord:
    """Read, filter and write one file; never raises for a bad file, returns its record.

    Parameters
    ----------
    input_path, output : Path
        Source image and destination TIFF.
    options : FilterOptions
        Filtering and writing options.
    model : LoadedModel, optional
        An already loaded model (a batch loads it once); default ``options.model``.
    progress : bool
        Show a per-plane progress bar.
    dry_run : bool
        Only report what would be done.
    """
    record, image = _read(input_path, output, options, dry_run)
    return _write(record, _filter(record, image, options, model, progress), output, options)


# The three stages of a file. Each adds its time to ``record.seconds`` and turns any error into
# a failed record; a stage after a failed (or skipped) one does nothing.

@contextmanager
def _stage(record: FileRecord):
    start = time.perf_counter()
    try:
        yield
    except NUNetError as exc:
        _fail(record, str(exc))
    except Exception as exc:  # a batch must go on past any bad file
        _fail(record, f"{record.input}: {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        record.seconds = round(record.seconds + time.perf_counter() - start, 4)


def _read(input_path: Path, output: Path, options: FilterOptions, dry_run: bool):
    from nunet.io import read_image, with_data

    record, image = FileRecord(str(input_path), str(output), "ok"), None
    with _stage(record):
        if output.resolve() == input_path.resolve():
            raise ImageWriteError(f"{output}: output would overwrite the input; choose another name or folder")
        if output.exists() and not options.overwrite:
            record.status = "skipped"
        elif dry_run:
            record.status = "dry-run"
        else:
            image = read_image(input_path)
            if options.axes:
                image = with_data(image, image.data, options.axes)
            record.shape, record.axes = list(image.data.shape), image.axes
    return record, image


def _filter(record: FileRecord, image, options: FilterOptions, model, progress: bool):
    from nunet.inference import filter_image
    from nunet.io import convert_dtype, with_data

    result = None
    if image is not None:
        with _stage(record):
            result = filter_image(image, model if model is not None else options.model, w=options.w,
                                  channel=options.channel, tile_size=options.tile_size,
                                  batch_size=options.batch_size, device=options.device,
                                  precision=options.precision, invert=options.invert, progress=progress)
            result = with_data(result, convert_dtype(result.data, options.dtype), result.axes)
    return result if record.status == "ok" else None


def _write(record: FileRecord, result, output: Path, options: FilterOptions) -> FileRecord:
    from nunet.io import write_image

    if result is not None:
        with _stage(record):
            write_image(result, output, overwrite=options.overwrite)
    return record


def _fail(record: FileRecord, message: str) -> None:
    record.status = "failed"
    record.error = message
    record.traceback = traceback.format_exc()


def run_batch(input_dir: Path, output_dir: Path, options: FilterOptions, *,
              patterns: Sequence[str] = DEFAULT_PATTERNS, recursive: bool = False,
              template: str | None = None, dry_run: bool = False,
              on_start: Callable[[int], None] | None = None,
              on_file: Callable[[FileRecord], None] | None = None) -> list[FileRecord]:
    """Filter every matching file of ``input_dir`` into ``output_dir``.

    Parameters
    ----------
    input_dir, output_dir : Path
        Folders; ``output_dir`` may equal or lie inside ``input_dir``.
    options : FilterOptions
        Per-image options; the model is loaded once for the whole batch.
    patterns : sequence of str
        Glob patterns on file names (case-insensitive).
    recursive : bool
        Descend into sub-folders and mirror them in ``output_dir``.
    template : str, optional
        Output name template (see :func:`output_path`). Default ``{stem}.tif``, or
        ``{stem}_nunet.tif`` when the output folder is the input folder.
    dry_run : bool
        Plan only: records say ``dry-run`` or ``skipped``; nothing is read or written.
    on_start, on_file : callable, optional
        Called with the number of inputs, then with each finished record.

    Raises
    ------
    NUNetError
        When the batch cannot start: missing input folder, no matching file, unknown model.
    """
    from nunet.errors import ImageReadError
    from nunet.inference import get_model
    from nunet.runtime import resolve_device
    from nunet.registry import resolve_model

    if not input_dir.is_dir():
        raise ImageReadError(f"{input_dir}: input folder not found")
    same = input_dir.resolve() == output_dir.resolve()
    template = template or (SAME_FOLDER_TEMPLATE if same else DEFAULT_TEMPLATE)
    inputs = collect_inputs(input_dir, output_dir, patterns, recursive, template)
    if not inputs:
        raise ImageReadError(f"{input_dir}: no files matching {' '.join(patterns)}"
                             + (" (recursive)" if recursive else ""))
    if options.w is None:
        resolve_model(options.model)
    model = None if dry_run or options.w is not None else get_model(options.model, resolve_device(options.device))
    model_tag = f"w{options.w:g}" if options.w is not None else model.name if model is not None else str(options.model)
    if on_start:
        on_start(len(inputs))
    claimed: dict[Path, Path] = {}
    jobs: list[tuple[Path, Path, str | None]] = []
    for path in inputs:
        try:
            out = output_path(path, input_dir, output_dir, template, model_tag)
        except ValueError as exc:
            raise NUNetError(str(exc)) from exc
        clash = f"{path}: output name {out.name} already used by {claimed[out].name}" if out in claimed else None
        claimed.setdefault(out, path)
        jobs.append((path, out, clash))
    return _pipeline(jobs, options, model, dry_run, on_file)


def _pipeline(jobs: list[tuple[Path, Path, str | None]], options: FilterOptions, model, dry_run: bool,
              on_file: Callable[[FileRecord], None] | None) -> list[FileRecord]:
    """Filter ``jobs`` (input, output, error) in order, reading ahead and writing behind.

    A reader thread loads the next file while the current one is filtered, and a writer thread
    saves the previous result, so a folder runs at the network's speed rather than network +
    I/O. At most one file is read ahead and two wait to be written, which bounds memory.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    def read(job: tuple[Path, Path, str | None]):
        path, out, clash = job
        if clash:
            return FileRecord(str(path), str(out), "failed", error=clash), None
        return _read(path, out, options, dry_run)

    records: list[FileRecord] = []
    writes: deque[Future] = deque()

    def finish(future: Future) -> None:
        records.append(future.result())
        if on_file:
            on_file(records[-1])

    with ThreadPoolExecutor(1, thread_name_prefix="nunet-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="nunet-write") as writer:
        ahead = reader.submit(read, jobs[0]) if jobs else None
        for i, (_, out, _) in enumerate(jobs):
            record, image = ahead.result()
            ahead = reader.submit(read, jobs[i + 1]) if i + 1 < len(jobs) else None
            result = _filter(record, image, options, model, progress=False)
            writes.append(writer.submit(_write, record, result, out, options))
            while writes and (writes[0].done() or len(writes) > 2):
                finish(writes.popleft())
        while writes:
            finish(writes.popleft())
    return records


def write_report(records: Sequence[FileRecord], path: Path) -> None:
    """Write the JSON report (one record per file) atomically."""
    from nunet._atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump([r.to_json() for r in records], fh, indent=2)
