"""``nunet fiji install|uninstall`` and ``nunet serve`` (the worker of Fiji's "NU-Net Filter" command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nunet.cli.app import exit_on_error, out
from nunet.options import DEFAULT_MODEL


def serve_cmd() -> None:
    """Run the filter worker used by Fiji's "NU-Net Filter" command (protocol on stdin/stdout)."""
    from nunet.integrations.serve import main as serve_main

    raise typer.Exit(serve_main())


fiji_app = typer.Typer(help='Install the "NU-Net Filter" command into Fiji or ImageJ.', no_args_is_help=True)


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

    from nunet.integrations.fiji_install import install

    with exit_on_error(2):
        written = install(fiji_dir, python or sys.executable, jython_jar)
    for path in written:
        out.print(f"installed {path}")
    out.print(
        f'Restart Fiji, then: Plugins > NU-Net > NU-Net Filter, or in a macro run("NU-Net Filter", '
        f'"model={DEFAULT_MODEL}");'
    )


@fiji_app.command("uninstall")
def fiji_uninstall_cmd(fiji_dir: Annotated[Path, typer.Argument(help="The Fiji.app or ImageJ folder.")]) -> None:
    """Remove what 'nunet fiji install' put into FIJI_DIR."""
    from nunet.integrations.fiji_install import uninstall

    with exit_on_error(2):
        removed = uninstall(fiji_dir)
    for path in removed:
        out.print(f"removed {path}")
