"""Evaluation: NU-Net against classical filters on images with ground truth (``nunet eval``).

:class:`EvalPlan` says what to evaluate, :func:`run_draws` evaluates it and
:func:`write_evaluation` writes the tables and figures; the pieces are :mod:`~nunet.evaluation.suites`
(the images), :mod:`~nunet.evaluation.run` (one draw), :mod:`~nunet.evaluation.stats` (the figures),
:mod:`~nunet.evaluation.report` (the files), :mod:`~nunet.evaluation.metrics` and
:mod:`~nunet.evaluation.baselines`.
"""

from nunet.evaluation.draws import EvalPlan, Evaluation, run_draws, write_evaluation
from nunet.evaluation.report import write_csv, write_draws, write_figures
from nunet.evaluation.run import evaluate
from nunet.evaluation.stats import band_summary, summarise, summarise_draws
from nunet.evaluation.suites import (
    EvalImage,
    degraded_synthetic_items,
    dsb_items,
    folder_items,
    real_items,
    suite_items,
    synthetic_items,
)

__all__ = [
    "EvalImage",
    "EvalPlan",
    "Evaluation",
    "band_summary",
    "degraded_synthetic_items",
    "dsb_items",
    "evaluate",
    "folder_items",
    "real_items",
    "run_draws",
    "suite_items",
    "summarise",
    "summarise_draws",
    "synthetic_items",
    "write_csv",
    "write_draws",
    "write_evaluation",
    "write_figures",
]
