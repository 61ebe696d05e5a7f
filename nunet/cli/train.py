"""``nunet train`` (a NU-Net from a TOML recipe) and ``nunet train-backbone`` (the nuclei-vgg perceptual network)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from nunet.cli.app import VerboseOpt, exit_on_error, out, progress_bar


def train_cmd(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML recipe of training options.")] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            "-s",
            metavar="KEY=VALUE",
            help="Set a training option over the recipe (repeatable): --set w=0.5 --set steps=200 "
            "--set output_dir=run1. Values are TOML (strings may be bare); the options are "
            "nunet.training.config.TrainConfig's fields (docs/cli.md).",
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT_DIR/checkpoint.pt.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train a NU-Net model (self-supervised: content loss + w x morphological loss)."""
    import shlex
    import sys

    from nunet.training.config import load_config, parse_overrides
    from nunet.training.loop import train

    with exit_on_error(2):
        cfg = load_config(config, parse_overrides(set_ or []))
    bar = progress_bar("training", "losses")
    task = bar.add_task("training", total=cfg.steps, losses="")

    terms = ("content", "morphological", "supervised", "distill")

    def progress(step: int, total: int, record: dict) -> None:
        losses = " ".join(f"{term} {record[term]:.3g}" for term in terms if record.get(term))
        bar.update(task, completed=step, losses=losses)

    with exit_on_error(1, verbose=verbose), bar:
        path = train(cfg, resume=resume, command=shlex.join(["nunet", *sys.argv[1:]]), progress=progress)
    out.print(f"wrote {path} and its model card, losses.csv, losses.png")


def train_backbone_cmd(
    out_file: Annotated[Path, typer.Argument(metavar="OUT.pt", help="Where to write the nuclei-vgg weights.")],
    steps: Annotated[Optional[int], typer.Option(help="Training steps.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (of the synthetic training images).")] = None,
    time_limit: Annotated[Optional[float], typer.Option(help="Stop after this many seconds (0: no limit).")] = None,
) -> None:
    """Train the nuclei-vgg perceptual network on degraded synthetic nuclei (for --backbone nuclei-vgg)."""
    from nunet.training.nuclei_vgg import BackboneTraining, train_backbone

    chosen = {"steps": steps, "seed": seed, "time_limit_s": time_limit}
    with exit_on_error(2):
        options = BackboneTraining(**{k: v for k, v in chosen.items() if v is not None}).validate()
    bar = progress_bar("training", "loss")
    task = bar.add_task("training", total=options.steps, loss="")
    with bar:
        summary = train_backbone(
            options, out_file, lambda step, total, loss: bar.update(task, completed=step, loss=f"bce {loss:.3g}")
        )
    out.print(f"wrote {out_file} ({summary['steps']} steps, final loss {summary['log'][-1]:.4g})")
