"""A batch's plan, checked before any compute: the inputs a folder holds, the output each one gets,
and the refusals (:class:`~nunet.errors.UsageError`, exit code 2) for an output name that leaves the
output folder, is an input file or is shared by two inputs, an existing output nunet did not write,
and an output folder that cannot be created or written (a write is probed).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from nunet.errors import NUNetError, UsageError

DEFAULT_PATTERNS = ("*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg", "*.zarr")


DEFAULT_TEMPLATE = "{stem}.tif"


#: Used instead of the default template when the output folder is the input folder.
SAME_FOLDER_TEMPLATE = "{stem}_nunet.tif"


#: The default templates' file type per output format (``nunet-batch --format``).


class OutputFormat(str, Enum):
    """``--format``: the file type of a batch's default output names."""

    TIFF = "tiff"
    ZARR = "zarr"


FORMAT_SUFFIXES = {OutputFormat.TIFF.value: ".tif", OutputFormat.ZARR.value: ".ome.zarr"}


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
    model: str | None = None  # the model that filtered it (a name or file stem; wN: a family blend)
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


def write_report(records: Sequence[FileRecord], path: Path) -> None:
    """Write the JSON report (one record per file) atomically."""
    from nunet._atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump([r.to_json() for r in records], fh, indent=2)
