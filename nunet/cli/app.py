"""The ``nunet`` Typer app, its consoles, the options the commands share (defined once), and the
ways a command reports a usage error (exit 2) or a warning.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

from nunet.errors import NUNetError, OptionWarning, PlaneReadError, UsageError
from nunet.options import NgffVersion, OutputDtype, Precision

err = Console(stderr=True, highlight=False, soft_wrap=True)


out = Console(highlight=False)


#: Python's own way of showing a warning, for the warnings that are not nunet's (:func:`show_warning`).
PYTHON_SHOWWARNING = warnings.showwarning


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
        min=0,
        help="Tile planes larger than this many pixels (0: never; "
        "default: CPU planes over 1280x1280 in 256-px tiles, "
        "GPU over 2048x2048).",
    ),
]

BatchOpt = Annotated[
    Optional[int],
    typer.Option(
        min=1, help="Planes per forward pass (default: measured with --precision auto, else 1 on CPU, 8 on GPU)."
    ),
]

DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]

PrecisionOpt = Annotated[
    Precision, typer.Option(help="fp16: GPU only; auto: the fastest within 1e-2 of fp32 on this device.")
]

DtypeOpt = Annotated[
    OutputDtype, typer.Option(help="Output pixel type: float32 in [0, 1]; integers over their full range.")
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
    Optional[NgffVersion], typer.Option(help="NGFF version of OME-Zarr outputs (default: the input's, else 0.5).")
]


@contextmanager
def exit_on_error(code: int = 2, *, verbose: bool = False) -> Iterator[None]:
    """The commands' one error-to-exit rule: a :class:`~nunet.errors.NUNetError` raised inside is one
    ``error:`` line (with the traceback when ``verbose``) and an exit: 2 for a
    :class:`~nunet.errors.UsageError` (found before any compute, by definition), 1 for a
    :class:`~nunet.errors.PlaneReadError` (mid-run; the finished planes are kept), ``code`` for the
    others (2 where the command has not started its work, 1 where it has)."""
    try:
        yield
    except NUNetError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        if verbose:
            err.print(traceback.format_exc())
        exit_code = 2 if isinstance(exc, UsageError) else 1 if isinstance(exc, PlaneReadError) else code
        raise typer.Exit(exit_code) from None


def progress_bar(label: str, *fields: str, transient: bool = False, disable: bool = False) -> Progress:
    """The commands' one progress bar on stderr: ``label``, the bar, done/total, elapsed and remaining
    time, and ``fields`` (names of task fields shown after the count)."""
    columns = [label, BarColumn(), MofNCompleteColumn(), *(f"{{task.fields[{f}]}}" for f in fields)]
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=err, transient=transient, disable=disable)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """nunet's :class:`~nunet.errors.OptionWarning` (a guess it made, a slow choice) as one ``warning:``
    line; other warnings as Python shows them."""
    if issubclass(category, OptionWarning):
        err.print(f"[yellow]warning:[/yellow] {escape(str(message))}")
    else:
        PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)
