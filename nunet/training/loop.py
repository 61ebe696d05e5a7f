"""Self-supervised NU-Net training (``nunet train``): content loss + w x morphological loss.

Data
----
Content images come from folders (each folder a "dataset"; every image format the I/O layer
reads; each YX plane of a stack is one image) and/or the synthetic generator (one dataset per
modality). Every epoch draws the same number of crops from each dataset, as the paper balanced
its 25 datasets. Crops get a random rescale, flips, rot90 and a contrast augmentation (gamma
0.5-2, log, or sigmoid with gain 3-8 and cutoff 0.25-0.75), redrawn until the crop spans at
least 16 grey levels of 0..255. Datasets marked ``invert`` (dark blobs) are inverted first.

Blob-mask targets come from folders of masks or label images (label > 0 -> 255) and/or
synthetic masks of random ellipses; a fixed bank of target crops is drawn once and its Gram
matrices precomputed; every step samples ``target_batch`` of them.

Schedule: a dry run trains a fresh network for ``dry_run_steps`` steps with unit weights,
sets the morphological scale to mean(content) / mean(morphological) over those steps, then a
new network (same seed) trains from scratch with content + w * scale * morphological, for
``steps`` steps or until ``time_limit_s`` seconds have passed (the model card says which).
With ``ema_decay`` > 0 the exported weights are an exponential moving average of the weights
over the steps (as Polyak averaging): a model that does not depend on where the last step landed.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from nunet.core.runtime import autocast
from nunet.errors import NUNetError
from nunet.training.config import CHECKPOINT, TrainConfig
from nunet.training.data import (
    content_batch,
    content_datasets,
    distinct,
    epoch_order,
    mask_bank,
    real_bank,
    supervised_bank,
    supervised_batch,
)
from nunet.training.report import write_card, write_logs


@dataclass
class State:
    """Everything a checkpoint holds besides the config."""

    step: int = 0
    morph_scale: float = 1.0
    log: list[dict] = field(default_factory=list)
    ema: dict[str, torch.Tensor] | None = None  # the moving average of the weights (when ema_decay > 0)


def update_ema(ema: dict[str, torch.Tensor], net: torch.nn.Module, decay: float) -> None:
    """ema <- decay x ema + (1 - decay) x the net's current weights (floating-point tensors only)."""
    with torch.no_grad():
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                ema[key].lerp_(value, 1.0 - decay)
            else:
                ema[key].copy_(value)


def _step(
    net, backbone, targets, batch, rng_torch, config, weight_morph: float, optimiser, supervised=None, teacher=None
):
    """One optimiser step; returns the content, morphological, supervised, distillation and total
    losses (floats).

    ``supervised`` is an (inputs, soft masks) pair for the supervised term, or None; with a ``teacher``
    network, the output on those inputs also learns the teacher's (L1 in [0, 1]: distillation).
    """
    from nunet.training.losses import blob_responses, content_loss, morphological_loss

    zero = torch.zeros((), device=next(net.parameters()).device)
    content, morph = zero, zero
    if config.content_weight or weight_morph:
        output = net(batch)
        features_out = backbone(output)
        with torch.no_grad():
            features_in = backbone.content_features(batch)
        # drawn even where w = 0 leaves it unused: the random sequence stays that of every other run
        index = torch.randint(len(targets), (min(config.target_batch, len(targets)),), generator=rng_torch)
        content = content_loss(features_out[backbone.content_tap], features_in)
        if weight_morph:  # w = 0: no Gram matrices to compute and differentiate
            morph = morphological_loss(features_out, targets, index.to(batch.device))
    fit, distill = zero, zero
    if supervised is not None:
        inputs, masks = supervised
        with autocast(inputs.device.type, config.precision):
            output = net(inputs).float().clamp(0.0, 255.0) / 255.0
        if config.supervised_loss == "l2":
            fit = torch.nn.functional.mse_loss(output, masks / 255.0)
        else:
            fit = torch.nn.functional.l1_loss(output, masks / 255.0)
        if teacher is not None:
            with torch.no_grad(), autocast(inputs.device.type, config.precision):
                taught = teacher(inputs).float().clamp(0.0, 255.0) / 255.0
            distill = torch.nn.functional.l1_loss(output, taught)
            if config.distill_blobs:
                distill = distill + config.distill_blobs * torch.nn.functional.l1_loss(
                    blob_responses(output, config.radius), blob_responses(taught, config.radius)
                )
    total = config.content_weight * content + weight_morph * morph + config.supervised_weight * fit
    total = total + config.distill_weight * distill
    optimiser.zero_grad(set_to_none=True)
    total.backward()
    optimiser.step()
    return content.item(), morph.item(), fit.item(), distill.item(), total.item()


def train(config: TrainConfig, resume: bool = False, command: str = "", progress=None) -> Path:
    """Train one model; return the saved TorchScript file (see module docstring).

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue from ``output_dir/checkpoint.pt`` (its step count, optimiser, logs).
    command : str
        The command line, recorded in the model card.
    progress : callable, optional
        ``progress(step, total, losses)`` after each step.
    """
    from nunet import save_model
    from nunet.core.model import ARCHITECTURES
    from nunet.core.runtime import resolve_device
    from nunet.registry import load_model
    from nunet.training.backbones.build import BackboneSpec, build_backbone
    from nunet.training.losses import TargetGrams
    from nunet.training.thin import fit_residual_blocks

    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    rng = np.random.default_rng(config.seed)
    crops = config.supervised_weight or config.distill_weight  # the supervised crops feed both terms
    real = real_bank(config) if crops or config.dsb_content else []
    datasets = content_datasets(config, real)
    backbone = build_backbone(BackboneSpec(config.backbone, config.seed, config.vgg_weights, config.download_vgg)).to(
        device
    )
    masks = torch.from_numpy(mask_bank(config, rng)[:, None]).to(device)
    targets = TargetGrams.from_masks(backbone, masks)
    names = sorted(datasets)

    def batches(state_rng: np.random.Generator):
        while True:
            order = epoch_order(names, config.crops_per_dataset, state_rng)
            for start in range(0, len(order) - config.content_batch + 1, config.content_batch):
                yield content_batch(datasets, order[start : start + config.content_batch], config.crop, state_rng).to(
                    device
                )

    def fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(config.seed)
        net = ARCHITECTURES[config.architecture]()
        if config.init_model:  # its residual blocks thinned or widened to the student's
            net.load_state_dict(fit_residual_blocks(initial_weights(config.init_model), net.state_dict()))
        net = net.to(device).train()
        return net, torch.optim.AdamW(net.parameters(), lr=config.lr)

    bank = supervised_bank(config) if crops else None
    teacher = load_model(config.teacher, device).network(config.precision) if config.teacher else None

    def supervised(state_rng: np.random.Generator):
        if bank is None:
            return None
        inputs, masks = supervised_batch(bank, config, state_rng, real)
        return inputs.to(device), masks.to(device)

    torch_rng = torch.Generator().manual_seed(config.seed)
    state = State()
    net, optimiser = fresh()
    checkpoint = out_dir / CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise NUNetError(f"{checkpoint}: nothing to resume")
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        net.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        ema = saved.get("ema") if config.ema_decay else None  # ema_decay 0: the last weights, as documented
        state = State(saved["step"], saved["morph_scale"], json.loads(saved["log"]), ema)
        rng = np.random.default_rng([config.seed, state.step])
    elif config.w:  # the paper's dry run balances the morphological term against the content term
        dry_rng = np.random.default_rng([config.seed, 1])
        feed = batches(dry_rng)
        contents, morphs = [], []
        for _ in range(config.dry_run_steps):
            c, m, _, _, _ = _step(net, backbone, targets, next(feed), torch_rng, config, 1.0, optimiser)
            contents.append(c)
            morphs.append(m)
        state.morph_scale = float(np.mean(contents) / max(np.mean(morphs), 1e-12))
        net, optimiser = fresh()
    if config.ema_decay and state.ema is None:
        state.ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    feed = batches(rng) if config.content_weight or config.w else itertools.repeat(None)  # no content term: no batch
    started = time.perf_counter()
    while state.step < config.steps:
        c, m, f, d, t = _step(
            net,
            backbone,
            targets,
            next(feed),
            torch_rng,
            config,
            config.w * state.morph_scale,
            optimiser,
            supervised(rng),
            teacher,
        )
        state.step += 1
        if state.ema is not None:
            update_ema(state.ema, net, config.ema_decay)
        state.log.append(
            {
                "step": state.step,
                "content": c,
                "morphological": m * state.morph_scale * config.w,
                "supervised": f,
                "distill": d,
                "total": t,
                "seconds": round(time.perf_counter() - started, 3),
            }
        )
        if progress:
            progress(state.step, config.steps, state.log[-1])
        if state.step % config.checkpoint_every == 0:
            _checkpoint(checkpoint, net, optimiser, state)
            write_logs(state.log, out_dir)
        if _out_of_time(started, config.time_limit_s):  # checked after a step: at least one is done
            break
    _checkpoint(checkpoint, net, optimiser, state)
    write_logs(state.log, out_dir)
    summary = {
        "steps": state.step,
        "stopped_by_time_limit": state.step < config.steps,
        "backbone": backbone.name,
        "backbone_weights": backbone.weights,
        "morph_scale": state.morph_scale,
        "final_losses": state.log[-1],
        "datasets": {n: len(p) for n, p in datasets.items()},
        "dsb_training_images": len(distinct(real)),
        "target_masks": len(targets),
        "config": asdict(config),
        "command": command,
    }
    if state.ema is not None:
        net.load_state_dict(state.ema)
    path = save_model(
        net.cpu().eval(),
        out_dir / f"{config.name}.pt",
        name=config.name,
        w=saved_w(config),
        radius=config.radius,
        description=f"NU-Net w={config.w:g}, backbone {backbone.name}",
        training=summary,
        **({"family": config.family} if config.family else {}),
        **({"frame_pad": config.frame_pad, "frame_fill": config.frame_fill} if config.frame_pad else {}),
    )
    write_card(out_dir / f"{config.name}.md", config, summary)
    return path


def initial_weights(name_or_path: str) -> dict:
    """The parameters of a registered or saved model, to start a training from."""
    from nunet.registry.models import load_model

    return {k: v.clone() for k, v in load_model(name_or_path, "cpu").module.state_dict().items()}


def saved_w(config: TrainConfig) -> float | None:
    """The strength a trained model carries: its family's (``supervised_strength``) when it joins one,
    the paper's w when the morphological loss was used, else none."""
    if config.family:
        return config.supervised_strength
    return config.w if config.w > 0 else None


def _out_of_time(started: float, limit_s: float) -> bool:
    return limit_s > 0 and time.perf_counter() - started > limit_s


def _checkpoint(path: Path, net, optimiser, state: State) -> None:
    from nunet._atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(
            {
                "model": net.state_dict(),
                "optimiser": optimiser.state_dict(),
                "step": state.step,
                "morph_scale": state.morph_scale,
                "log": json.dumps(state.log),
                **({"ema": state.ema} if state.ema is not None else {}),
            },
            tmp,
        )
