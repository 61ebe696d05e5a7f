"""Figures from evaluation rows: means per dataset and family, per nucleus-size band, and over
draws (mean, 95% interval, paired difference to the tuned DoG).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nunet.evaluation.run import ALL, REFERENCE, Row


def summarise(rows: Sequence[Row]) -> list[dict]:
    """Per family (and over all datasets, family ``all``) and method: the mean over datasets of the
    per-dataset means (and the std across datasets) of gain, fold change and the three F1s."""
    summary = []
    families = list(dict.fromkeys(r.family for r in rows))
    for family in [*families, ALL] if len(families) > 1 else [ALL]:
        for method in dict.fromkeys(r.method for r in rows):
            per_dataset = {}
            for r in rows:
                if r.method == method and family in (ALL, r.family):
                    per_dataset.setdefault(r.dataset, []).append(r)

            def stat(field: str) -> tuple[float, float]:
                values = [[getattr(r, field) for r in rs] for rs in per_dataset.values()]
                means = [float(np.mean([v for v in vs if np.isfinite(v)])) for vs in values if any(np.isfinite(vs))]
                return (float(np.mean(means)), float(np.std(means))) if means else (float("nan"), float("nan"))

            summary.append(
                {
                    "family": family,
                    "method": method,
                    "gain": stat("gain"),
                    "fold": stat("fold"),
                    "f1_fixed": stat("f1_fixed"),
                    "f1_best": stat("f1_best"),
                    "f1_shared": stat("f1_shared"),
                }
            )
    return summary


def band_summary(rows: Sequence[Row]) -> list[dict]:
    """Per family, size band and method (rows with a band), and per family over every band (band
    ``all``): the number of images and the mean over them of the best-threshold F1 (each image at
    its dataset's best threshold) and of the shared-threshold F1."""
    summary = []
    banded = [r for r in rows if r.band and np.isfinite(r.f1_best)]
    keys = dict.fromkeys([(r.family, r.band, r.method) for r in banded] + [(r.family, ALL, r.method) for r in banded])
    for family, band, method in keys:
        chosen = [r for r in banded if (r.family, r.method) == (family, method) and band in (ALL, r.band)]
        summary.append(
            {
                "family": family,
                "band": band,
                "method": method,
                "images": len(chosen),
                "f1_best": float(np.mean([r.f1_best for r in chosen])),
                "f1_shared": float(np.mean([r.f1_shared for r in chosen])),
            }
        )
    return summary


@dataclass(frozen=True)
class Spread:
    """A figure over the draws of a suite: its mean and 95% interval (Student's t over the draws;
    no interval for one draw)."""

    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        from scipy import stats

        v = np.asarray(values, dtype=float)
        mean = float(v.mean())
        if len(v) < 2:
            return cls(mean, float("nan"), float("nan"))
        half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
        return cls(mean, mean - half, mean + half)


def summarise_draws(rows: Sequence[Row], reference: str = REFERENCE) -> list[dict]:
    """Per family (and ``all``) and method, over the draws in ``rows``: best-threshold and
    shared-threshold F1 (:class:`Spread` of the per-draw :func:`summarise` figures) and their
    paired differences to ``reference`` on the same draws (keys ``f1_best_diff``,
    ``f1_shared_diff``), with the per-draw values (``per_draw``: draw -> (f1_best, f1_shared))."""
    draws = sorted({r.draw for r in rows})
    by_draw = {d: {(s["family"], s["method"]): s for s in summarise([r for r in rows if r.draw == d])} for d in draws}
    summary = []
    for family, method in by_draw[draws[0]]:
        entry: dict = {"family": family, "method": method}
        values = {field: [by_draw[d][(family, method)][field][0] for d in draws] for field in ("f1_best", "f1_shared")}
        for field, per_draw in values.items():
            entry[field] = Spread.of(per_draw)
            if (family, reference) in by_draw[draws[0]]:
                references = [by_draw[d][(family, reference)][field][0] for d in draws]
                entry[field + "_diff"] = Spread.of(np.subtract(per_draw, references))
        entry["per_draw"] = dict(zip(draws, zip(values["f1_best"], values["f1_shared"])))
        summary.append(entry)
    return summary
