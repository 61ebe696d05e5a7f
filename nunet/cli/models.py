"""``nunet models`` (what is installed) and ``nunet export`` (a bioimage.io package)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from nunet.cli.app import err, exit_on_error, out
from nunet.options import DEFAULT_MODEL


class Weights(str, Enum):
    """``nunet export --format``: the weight formats of the package (those of
    :data:`nunet.integrations.bioimageio.FORMATS`, TorchScript always)."""

    TORCHSCRIPT = "torchscript"
    TORCHSCRIPT_ONNX = "torchscript,onnx"


models_app = typer.Typer(help="List the models (works offline) and fetch those not installed.")


@models_app.callback(invoke_without_command=True)
def models_cmd(ctx: typer.Context) -> None:
    """List the installed models, and those nunet models fetch can download (works offline)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from nunet.registry.manifest import downloadable
    from nunet.registry.models import ENV_VAR, list_models, model_dirs

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
    for d in downloadable(e.name for e in entries):
        table.add_row(
            f"[dim]{d.name}[/dim]",
            d.family or "-",
            "-" if d.w is None else f"{d.w:g}",
            f"{d.size / 1e6:.1f} MB",
            f"[dim]not installed: nunet models fetch {d.name}[/dim]",
        )
    out.print(table)
    if not entries:
        folders = ", ".join(str(d) for d in model_dirs()) or "none"
        err.print(f"no models found (searched: {folders}; add folders with {ENV_VAR})")


@models_app.command("fetch")
def fetch_cmd(
    name: Annotated[list[str], typer.Argument(help="Model(s) listed as not installed by 'nunet models'.")],
    to: Annotated[
        Optional[Path], typer.Option(help="Folder to put them in (default: ~/.local/share/nunet/models).")
    ] = None,
) -> None:
    """Download models and their cards, checked against nunet's manifest (size and sha256)."""
    from nunet.registry.manifest import fetch

    for model in name:
        with exit_on_error(1), err.status(f"downloading {model}"):  # an unknown name is a UsageError: 2
            path = fetch(model, to)
        out.print(f"installed {path}")


def export_cmd(
    model: Annotated[str, typer.Argument(help="Registered model name or TorchScript .pt file.")],
    package: Annotated[Path, typer.Argument(metavar="OUT.zip", help="The bioimage.io package to write.")],
    format: Annotated[
        Weights, typer.Option("--format", help="Weights: TorchScript, or TorchScript and ONNX (for deepImageJ).")
    ] = Weights.TORCHSCRIPT_ONNX,
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
    """Package a model for bioimage.io tools (deepImageJ, JDLL, bioimageio.core); needs the bioimageio extra."""
    from nunet.integrations.bioimageio import export_bioimageio

    formats = tuple(format.value.split(","))
    with exit_on_error(2):
        path = export_bioimageio(model, package, formats, sample, overwrite=overwrite)
    out.print(f"wrote {path}; check it with: bioimageio test {path}")
