"""Filtering files and folders: a plan checked before any compute, claims, atomic writes, records.

Plan
----
Before any image is read, :func:`plan_batch` lists the inputs and their outputs and refuses the
run (:class:`~nunet.errors.UsageError`, exit code 2) when an output name leaves the output folder,
is an input file, or is shared by two inputs, when an existing output was not written by nunet
(only nunet's own outputs are skipped or, with ``overwrite``, replaced), and when the output folder
cannot be created or written (a write is probed).

Claims
------
Each output is claimed before its input is read: ``.<name>.nunet-claim`` beside it, holding an
OS lock (``fcntl.flock``) for as long as the output is being computed and written (the file names
the process and host, for people). A second run writing into the same folder at the same time
skips what the first one holds, so no image is computed twice. The kernel releases the lock when
its process dies, on any host, whatever its name or process id, so a claim whose lock can be
taken is stale (a run killed by SIGKILL or out of memory, a restarted container): it is taken
over, and the ``.<name>.*.part`` file that run left is removed. ``nunet filter`` and
``--overwrite`` follow the same rule.

Records
-------
A batch never stops at a bad file: each file gets a :class:`FileRecord` whose status is ``ok``,
``skipped`` (an existing nunet output, or claimed by another run), ``dry-run`` or ``failed`` (with a
one-line error naming the file). Inputs are only read; outputs are written to a temporary ``.part``
file and renamed, so an interrupted batch leaves no partial output and a rerun resumes where it
stopped. On Ctrl-C (SIGINT) the batch stops after the file in progress and returns what was done.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nunet.errors import NUNetError, UsageError
from nunet.settings import FilterSettings

DEFAULT_PATTERNS = ("*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg", "*.zarr")
DEFAULT_TEMPLATE = "{stem}.tif"
#: Used instead of the default template when the output folder is the input folder.
SAME_FOLDER_TEMPLATE = "{stem}_nunet.tif"
#: The default templates' file type per output format (``nunet-batch --format``).
FORMAT_SUFFIXES = {"tiff": ".tif", "zarr": ".ome.zarr"}
CLAIM_SUFFIX = ".nunet-claim"


@dataclass
class FileRecord:
    """What happened to one input file (one entry of the JSON report)."""

    input: str
    output: str | None
    status: str
    shape: list[int] | None = None
    axes: str | None = None
    seconds: float = 0.0
    radius: float | None = None  # the nucleus radius (px) the image was filtered for (None: at its own scale)
    error: str | None = None
    traceback: str | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        record = asdict(self)
        record.pop("traceback")
        return record


@dataclass(frozen=True)
class Job:
    """One input and its planned output."""

    input: Path
    output: Path


@dataclass
class BatchResult:
    """The records of a batch, in input order, and whether it was interrupted (Ctrl-C)."""

    records: list[FileRecord]
    interrupted: bool = False


def _matches(path: Path, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(path.name.lower(), p.lower()) for p in patterns)


def candidate_files(
    input_dir: Path, output_dir: Path, patterns: Sequence[str] = DEFAULT_PATTERNS, recursive: bool = False
) -> list[Path]:
    """Files of ``input_dir`` matching any pattern, sorted; never hidden or ``.part`` files, nor files
    inside ``output_dir`` when it lies inside ``input_dir``."""
    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()
    found = []
    for path in input_dir.rglob("*") if recursive else input_dir.glob("*"):
        if not (path.is_file() or is_zarr_store(path)) or path.name.startswith(".") or path.suffix == ".part":
            continue
        if any(is_zarr_store(parent) for parent in path.relative_to(input_dir).parents if parent.name):
            continue  # inside a zarr store
        if output_dir != input_dir and output_dir in path.resolve().parents:
            continue
        if _matches(path, patterns):
            found.append(path)
    return sorted(found)


def collect_inputs(
    input_dir: Path,
    output_dir: Path,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    recursive: bool = False,
    template: str = DEFAULT_TEMPLATE,
) -> list[Path]:
    """:func:`candidate_files`, without the batch's own outputs when both folders are the same
    (files whose name matches the output template)."""
    found = candidate_files(input_dir, output_dir, patterns, recursive)
    if input_dir.resolve() != output_dir.resolve():
        return found
    own = _template_glob(template)
    return [p for p in found if not fnmatch.fnmatch(p.name, own)]


def is_zarr_store(path: Path) -> bool:
    """A folder named ``*.zarr`` (an OME-Zarr image is one input, not a folder of inputs)."""
    from nunet.io import ZARR_SUFFIX

    return path.suffix.lower() == ZARR_SUFFIX and path.is_dir()


def image_stem(path: Path) -> str:
    """The name without its suffix; ``.ome.zarr`` and ``.zarr`` removed whole."""
    from nunet.io import ZARR_SUFFIX

    name = path.name
    for suffix in (".ome" + ZARR_SUFFIX, ZARR_SUFFIX):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _template_glob(template: str) -> str:
    """The glob matching every name a template can produce (``{stem}_nunet.tif`` -> ``*_nunet.tif``)."""
    glob = template
    for key in ("stem", "name", "model"):
        glob = glob.replace("{" + key + "}", "*")
    return glob


def output_path(input_path: Path, input_root: Path, output_dir: Path, template: str, model: str) -> Path:
    """Output file for an input: sub-folders mirrored, file name from the template.

    The template may use ``{stem}`` (input name without suffix), ``{name}`` (with suffix)
    and ``{model}`` (the model name or file stem); the result must stay inside ``output_dir``.
    """
    rel = input_path.resolve().relative_to(input_root.resolve())
    model_tag = Path(model).stem if model.endswith(".pt") else model
    try:
        name = template.format(stem=image_stem(input_path), name=input_path.name, model=model_tag)
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"bad name template '{template}': use {{stem}}, {{name}} or {{model}}") from exc
    folder = (output_dir / rel.parent).resolve()
    out = (folder / name).resolve()
    if not name or Path(name).is_absolute() or out.parent != folder:
        raise UsageError(
            f"name template '{template}' gives '{name}', which leaves the output folder; use a plain file name"
        )
    return output_dir / rel.parent / name


def check_writable_folder(folder: Path) -> None:
    """Create ``folder`` (and parents) and probe a write there; UsageError naming it if either fails."""
    import tempfile

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nunet-probe-"):
            pass
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{folder}: a file stands where a folder of the path should be") from None
    except OSError as exc:
        raise UsageError(f"{folder}: output folder is not writable ({exc.strerror or exc})") from None


def check_report_path(path: Path) -> None:
    """Check before the batch that the JSON report can be written at ``path``."""
    if path.is_dir():
        raise UsageError(f"--report: {path} is a folder; give a file name")
    try:
        check_writable_folder(path.parent)
    except UsageError as exc:
        raise UsageError(f"--report: {exc}") from None


def plan_batch(
    input_dir: Path,
    output_dir: Path,
    *,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    recursive: bool = False,
    template: str | None = None,
    model_tag: str = "",
    check_folder: bool = True,
    output_format: str = "tiff",
) -> list[Job]:
    """The inputs and outputs of a batch, checked (see module docstring); raises UsageError.

    ``output_format`` (a key of ``FORMAT_SUFFIXES``) sets the file type of the default templates.
    """
    from nunet.io import check_output_name, written_by_nunet

    if not input_dir.is_dir():
        raise UsageError(f"{input_dir}: input folder not found")
    input_dir, output_dir = input_dir.absolute(), output_dir.absolute()  # the report's paths: all absolute
    same = input_dir.resolve() == output_dir.resolve()
    if output_format not in FORMAT_SUFFIXES:
        raise UsageError(f"--format: '{output_format}' is not one of {', '.join(FORMAT_SUFFIXES)}")
    default = SAME_FOLDER_TEMPLATE if same else DEFAULT_TEMPLATE
    template = template or default.replace(".tif", FORMAT_SUFFIXES[output_format])
    candidates = candidate_files(input_dir, output_dir, patterns, recursive)
    inputs = collect_inputs(input_dir, output_dir, patterns, recursive, template)
    if not inputs:
        if candidates:
            raise UsageError(
                f"{input_dir}: every matching input would be its own output with the name template "
                f"'{template}'; choose another template or output folder"
            )
        raise UsageError(f"{input_dir}: no files matching {' '.join(patterns)}" + (" (recursive)" if recursive else ""))
    # files the run must never replace: its inputs, and matching files that are not earlier outputs
    # (a file's header is read only where an output name meets it)
    own_inputs, matching = {p.resolve() for p in inputs}, {p.resolve() for p in candidates}
    jobs, claimed = [], {}
    for path in inputs:
        out = output_path(path, input_dir, output_dir, template, model_tag)
        try:
            check_output_name(out)  # a name template ending in .png would get TIFF bytes
        except NUNetError as exc:
            raise UsageError(f"--name-template: {exc}") from None
        key = out.resolve()
        if key in claimed:
            raise UsageError(
                f"{path.name} and {claimed[key].name} would both be written to {out}; "
                "use --name-template with {name} to keep them apart"
            )
        if key in own_inputs or (key in matching and not written_by_nunet(key)):
            raise UsageError(
                f"{out}: output for {path.name} would replace an input file; "
                "choose another name template or output folder"
            )
        if out.exists() and not written_by_nunet(out):
            raise UsageError(
                f"{out}: exists and was not written by nunet; it is never replaced "
                "(move it or choose another name template or output folder)"
            )
        claimed[key] = path
        jobs.append(Job(path, out))
    if check_folder:
        for folder in sorted({job.output.parent for job in jobs}):
            check_writable_folder(folder)
    return jobs


# ---- claims ------------------------------------------------------------------------------


def _claim_path(output: Path) -> Path:
    return output.with_name(f".{output.name}{CLAIM_SUFFIX}")


@dataclass(frozen=True)
class Claim:
    """A held claim on an output: its claim file and the open descriptor that holds the lock."""

    path: Path
    fd: int

    def release(self) -> None:
        """Remove the claim file (if it is still this claim's) and drop the lock."""
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)


def claim(output: Path) -> Claim | None:
    """Claim ``output`` for this process; None when a live run holds it. A stale claim (its lock free:
    its process is gone) is taken over and the ``.part`` files its run left for this output removed."""
    import fcntl

    path = _claim_path(output)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # released and removed between our open and our lock: claim the new file
    if os.fstat(fd).st_size:  # left by a run that died holding it
        for part in output.parent.glob(f".{output.name}.*.part"):
            if part.is_dir():  # an OME-Zarr output being written
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return Claim(path, fd)


@contextmanager
def claimed(output: Path) -> Iterator[Claim | None]:
    """:func:`claim` for the duration of a ``with`` block (None: another run holds it)."""
    held = claim(output)
    try:
        yield held
    finally:
        if held is not None:
            held.release()


# ---- one file ----------------------------------------------------------------------------


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
    from nunet.inference import filter_image, nucleus_radius
    from nunet.io import convert_dtype, with_data

    result = None
    if image is not None:
        with _stage(record):
            record.radius = nucleus_radius(image, settings.radius, channel=settings.channel, invert=settings.invert)
            fixed = settings.with_radius_pixels(record.radius)
            result = filter_image(
                image,
                model if model is not None else settings.model,
                channel=settings.channel,
                progress=progress,
                **fixed.plane_kwargs(),
            )
            result = with_data(result, convert_dtype(result.data, settings.dtype), result.axes)
    return result if record.status == "ok" else None


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
    from nunet.io import ZARR_SUFFIX, check_output_name, written_by_nunet

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
            from nunet.preprocess import channel_picks

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


# ---- folders -----------------------------------------------------------------------------


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
    from nunet.registry import load_model, resolve_model

    settings = settings.resolved()
    resolve_model(settings.model)
    model = None if dry_run or settings.w is not None else load_model(settings.model, settings.device)
    model_tag = (
        f"w{settings.w:g}" if settings.w is not None else model.name if model is not None else str(settings.model)
    )
    jobs = plan_batch(
        input_dir,
        output_dir,
        patterns=patterns,
        recursive=recursive,
        template=template,
        model_tag=model_tag,
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


def write_report(records: Sequence[FileRecord], path: Path) -> None:
    """Write the JSON report (one record per file) atomically."""
    from nunet._atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump([r.to_json() for r in records], fh, indent=2)
