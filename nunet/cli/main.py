"""The ``nunet`` and ``nunet-batch`` entry points: the commands of :mod:`nunet.cli` on one Typer app.

Exit codes: 0 every file succeeded (or was skipped), 1 some file failed, 2 usage error or
a run that cannot start (bad option, missing input, folder or model, no matching file, an output
that would replace an input or a file nunet did not write, an unwritable output folder or report),
found before any image is filtered; 130 interrupted (Ctrl-C or SIGTERM), after printing the summary and
writing the report for the files done.
"""

from __future__ import annotations

import warnings
from typing import Annotated

import typer

from nunet.cli.app import app, out, show_warning
from nunet.cli.evaluate import eval_cmd
from nunet.cli.fiji import fiji_app, serve_cmd
from nunet.cli.filter import batch, filter_cmd
from nunet.cli.models import export_cmd, models_app
from nunet.cli.train import train_backbone_cmd, train_cmd

#: The commands, in the order ``nunet --help`` lists them.
app.command("filter")(filter_cmd)
app.command("batch")(batch)
app.add_typer(models_app, name="models")
app.command("eval")(eval_cmd)
app.command("train")(train_cmd)
app.command("train-backbone")(train_backbone_cmd)
app.command("export")(export_cmd)
app.command("serve")(serve_cmd)
app.add_typer(fiji_app, name="fiji")


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


def _show_option_warnings() -> None:
    """Every warning of the command goes through :func:`show_warning`."""
    warnings.showwarning = show_warning


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
