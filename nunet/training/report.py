"""What a training run leaves beside its model: the loss log (CSV, JSON, a figure) and the model card."""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from nunet.training.config import TrainConfig


def write_logs(log: list[dict], out_dir: Path) -> None:
    """losses.csv and losses.png (content, morphological, total, raw and EWMA-smoothed, as Fig. 3)."""
    from matplotlib.figure import Figure

    with (out_dir / "losses.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(log[0]))
        writer.writeheader()
        writer.writerows(log)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    steps = [r["step"] for r in log]
    for key, colour in (
        ("content", "tab:blue"),
        ("morphological", "tab:orange"),
        ("supervised", "tab:red"),
        ("distill", "tab:purple"),
        ("total", "tab:green"),
    ):
        values = np.array([r.get(key, 0.0) for r in log])
        if not values.any():
            continue
        smooth = np.copy(values)
        for i in range(1, len(values)):
            smooth[i] = 0.9 * smooth[i - 1] + 0.1 * values[i]
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(steps, smooth, color=colour, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "losses.png", dpi=100)


def listing(names: list[str]) -> str:
    """Names in order of first appearance, one listed n times as ``name x n``."""
    return ", ".join(name if n == 1 else f"{name} x{n}" for name, n in Counter(names).items())


def write_card(path: Path, config: TrainConfig, summary: dict) -> None:
    """The model card: w, backbone and weights, data, steps, losses, the exact command."""
    final = summary["final_losses"]
    target = "soft masks" if config.supervised_target == "mask" else f"{config.supervised_target} targets"
    stopped = (
        f" of {config.steps}, stopped by the {config.time_limit_s:g} s time limit"
        if summary.get("stopped_by_time_limit")
        else ""
    )
    lines = [
        f"# {config.name}",
        "",
        f"NU-Net w={config.w:g}, backbone {summary['backbone']}.",
        "",
        "| field | value |",
        "|---|---|",
        f"| w | {config.w:g} |",
        f"| backbone | {summary['backbone']} ({summary['backbone_weights']}) |",
        f"| steps | {summary['steps']}{stopped} (content batch {config.content_batch}, target batch "
        f"{config.target_batch}, crop {config.crop}, AdamW lr {config.lr:g}, {config.precision}) |",
        f"| content datasets | {', '.join(f'{k} ({v} planes)' for k, v in summary['datasets'].items())} |",
        f"| blob-mask targets | {summary['target_masks']} (folders: {', '.join(config.mask_dirs) or 'none'}; "
        f"synthetic: {config.synthetic_masks}) |",
        f"| network | {config.architecture} (nunet.core.model.ARCHITECTURES) |",
        f"| initial weights | {config.init_model or 'random (seed ' + str(config.seed) + ')'} |",
        f"| dry-run morphological scale | {summary['morph_scale']:.4g} |",
        *(
            [
                f"| distillation | {config.distill_weight:g} x (L1 to `{config.teacher}`'s output"
                + (f" + {config.distill_blobs:g} x L1 to its blob-detection responses" if config.distill_blobs else "")
                + "), supervised crops |"
            ]
            if config.teacher
            else []
        ),
        f"| loss | {config.content_weight:g} x content + w x morphological"
        + (
            f" + {config.supervised_weight:g} x {config.supervised_loss.upper()} to "
            f"{target} of degraded synthetic nuclei (strength {config.supervised_strength:g}, batch "
            f"{config.supervised_batch}, {config.supervised_images} images per modality"
            + (f"; {config.clean_share:g} of the crops left undegraded" if config.clean_share else "")
            + ")"
            if config.supervised_weight
            else ""
        )
        + (" ; content degraded (nunet.data.degrade)" if config.degrade_content else "")
        + " |",
        *(
            [
                f"| DSB images | {summary['dsb_training_images']} of the 2018 Data Science Bowl's training split "
                f"({listing(config.dsb_modalities)}; never a validation kind or a reserved id), resized to a "
                f"{config.radius:g}-px median nucleus radius, {config.dsb_share:g} of each supervised batch |"
            ]
            if summary.get("dsb_training_images")
            else []
        ),
        *(
            [f"| frame | {config.frame_pad} px ({config.frame_fill}) around each normalised plane (training and use) |"]
            if config.frame_pad
            else []
        ),
        f"| final losses | content {final['content']:.4g}, w x morphological {final['morphological']:.4g}, "
        f"supervised {final.get('supervised', 0.0):.4g}, total {final['total']:.4g} |",
        "| held-out split | synthetic training images use seeds >= 10^6 (nunet.data.synth.training_seed); "
        "evaluation seeds are below; the annotated real images are evaluation-only |",
        f"| made by | `{summary['command'] or ' '.join(sys.argv)}` |",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
