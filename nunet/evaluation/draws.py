"""A whole evaluation, as ``nunet eval`` runs it and as Python can rerun it: a suite drawn one or
more times (seeds ``seed``, ``seed + 1``, ...), each draw evaluated on its own, the files written.

>>> from nunet.evaluation import EvalPlan, run_draws, write_evaluation
>>> result = run_draws(EvalPlan(suite="dsb", draws=2))          # doctest: +SKIP
>>> write_evaluation(result, "eval-out")                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from nunet.errors import UsageError
from nunet.evaluation.report import write_csv, write_draws, write_figures
from nunet.evaluation.run import RADIUS_MODES, Row, evaluate
from nunet.evaluation.stats import summarise
from nunet.evaluation.suites import SUITES, EvalImage, folder_items, suite_items, synthetic_items
from nunet.options import DEFAULT_MODEL


@dataclass(frozen=True)
class EvalPlan:
    """What to evaluate: a built-in suite (or a folder of images with masks/centroids), the models
    (default: the default model's family), how many draws, and the models' radius option."""

    suite: str = "heldout"
    models: tuple[str, ...] | None = None
    data: str | Path | None = None  # --suite dsb: a checkout (default: the committed subset)
    real_data: str | Path | None = None  # the stardist wheel or its test images (default: installed)
    images: str | Path | None = None
    masks: str | Path | None = None
    centroids: str | Path | None = None
    object_radius: float = 6.0
    invert: bool = False
    radius: str | float = "auto"
    n_images: int = 4
    size: int = 256
    seed: int = 0
    draws: int = 1
    modalities: tuple[str, ...] | None = None
    stacks: int = 1
    augment: bool = False

    def __post_init__(self) -> None:
        if self.suite not in SUITES:
            raise UsageError(f"--suite: '{self.suite}' is not one of {', '.join(SUITES)}")
        if (self.images is None) != (self.masks is None and self.centroids is None):
            raise UsageError("--images: needs --masks and/or --centroids")
        if self.images is not None and self.draws > 1:
            raise UsageError("--draws: a folder of images is one draw; --draws needs a built-in suite")
        if self.draws < 1:
            raise UsageError(f"--draws: must be >= 1, got {self.draws}")
        if isinstance(self.radius, str) and self.radius not in RADIUS_MODES:
            try:
                object.__setattr__(self, "radius", float(self.radius))
            except ValueError:
                raise UsageError(
                    f"--radius: '{self.radius}' is not one of {', '.join(RADIUS_MODES)} or a number of pixels"
                ) from None

    def model_names(self) -> list[str]:
        """The models compared: those named, else every member of the default model's family."""
        if self.models:
            return list(self.models)
        from nunet.registry import family_of

        return [name for name, _ in family_of(DEFAULT_MODEL)]

    def items(self, draw: int) -> list[EvalImage]:
        """The images of one draw (its seed)."""
        if self.images is not None:
            return folder_items(self.images, self.masks, self.object_radius, self.invert, self.centroids)
        if self.suite == "synthetic":
            return synthetic_items(self.n_images, self.size, draw, self.stacks, self.modalities)
        return suite_items(self.suite, self.data if self.suite == "dsb" else self.real_data, draw)


@dataclass
class Evaluation:
    """Every draw's rows, the summary over them, and the first draw's images and outputs (for figures)."""

    plan: EvalPlan
    rows: list[Row] = field(default_factory=list)
    items: Sequence[EvalImage] = ()
    outputs: dict = field(default_factory=dict)

    @property
    def summary(self) -> list[dict]:
        return summarise(self.rows)


def run_draws(plan: EvalPlan, status: Callable[[str], object] | None = None) -> Evaluation:
    """Evaluate each draw of ``plan``; ``status(message)`` may return a context shown while a draw runs."""
    models = plan.model_names()
    result = Evaluation(plan)
    for draw in range(plan.seed, plan.seed + plan.draws):
        items = plan.items(draw)
        message = f"draw {draw}: evaluating {len(items)} images x {5 + len(models) * (1 + plan.augment)} methods"
        with status(message) if status else nullcontext():
            rows, outputs = evaluate(items, models, augment=plan.augment, draw=draw, radius=plan.radius)
        result.rows += rows
        if draw == plan.seed:  # the figures show the first draw
            result.items, result.outputs = items, outputs
    return result


def write_evaluation(result: Evaluation, out_dir: str | Path) -> list[Path]:
    """results.csv, summary.csv, the markdown tables and figures (and the draws' tables) in ``out_dir``."""
    out_dir = Path(out_dir)
    first = [r for r in result.rows if r.draw == result.plan.seed]
    paths = write_csv(result.rows, result.summary, out_dir) + write_figures(
        result.items, first, result.outputs, out_dir
    )
    if result.plan.draws > 1:
        paths += write_draws(result.rows, out_dir)
    return paths
