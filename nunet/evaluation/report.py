"""The evaluation's files: markdown tables (summary, datasets, bands, draws), CSV rows and figures
(drawn on :class:`matplotlib.figure.Figure`: the caller's backend is left alone).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nunet.evaluation import metrics
from nunet.evaluation.run import ALL, REFERENCE, Row
from nunet.evaluation.stats import band_summary, summarise_draws
from nunet.evaluation.suites import EvalImage


def markdown_table(summary: Sequence[dict], methods: Sequence[str] | None = None) -> str:
    """A Markdown table of best-threshold F1 per family, F1 at the shared threshold and contrast
    gain (over all datasets), one row per detection method (for model cards and reports)."""
    families = list(dict.fromkeys(s["family"] for s in summary))
    by = {(s["family"], s["method"]): s for s in summary}
    shown = [
        m for m in (methods or dict.fromkeys(s["method"] for s in summary)) if np.isfinite(by[(ALL, m)]["f1_best"][0])
    ]
    head = ["method", *(f"F1 {f}" for f in families), "F1 shared threshold", "contrast gain"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in shown:
        cells = [f"{by[(f, m)]['f1_best'][0]:.2f}" for f in families]
        gain = by[(ALL, m)]["gain"][0]
        cells += [f"{by[(ALL, m)]['f1_shared'][0]:.2f}", f"{gain:.1f}" if np.isfinite(gain) else "-"]
        lines.append("| " + " | ".join([m, *cells]) + " |")
    return "\n".join(lines) + "\n"


def dataset_table(rows: Sequence[Row]) -> str:
    """A Markdown table of the mean best-threshold F1 per dataset (an acquisition kind for the DSB
    suite; its images at the dataset's best threshold), one column per detection method."""
    methods = list(dict.fromkeys(r.method for r in rows if np.isfinite(r.f1_best)))
    datasets = list(dict.fromkeys((r.family, r.dataset) for r in rows))
    lines = ["| family | dataset | images | " + " | ".join(methods) + " |", "|" + "---|" * (3 + len(methods))]
    for family, dataset in datasets:
        chosen = {m: [r.f1_best for r in rows if (r.dataset, r.method) == (dataset, m)] for m in methods}
        cells = [f"{np.mean(chosen[m]):.3f}" for m in methods]
        lines.append(f"| {family} | {dataset} | {len(chosen[methods[0]])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def band_table(summary: Sequence[dict]) -> str:
    """Markdown tables of :func:`band_summary`: one row per family and band (with its image count),
    one column per method; best-threshold F1, then F1 at the threshold shared by every dataset."""
    methods = list(dict.fromkeys(s["method"] for s in summary))
    by = {(s["family"], s["band"], s["method"]): s for s in summary}
    groups = list(dict.fromkeys((s["family"], s["band"]) for s in summary))
    tables = []
    for field, title in (("f1_best", "best threshold per dataset"), ("f1_shared", "one threshold shared by all")):
        lines = [
            f"F1 at the {title} (mean over the images)",
            "",
            "| family | size band | images | " + " | ".join(methods) + " |",
            "|" + "---|" * (3 + len(methods)),
        ]
        for family, band in groups:
            cells = [f"{by[(family, band, m)][field]:.3f}" if (family, band, m) in by else "-" for m in methods]
            count = next(by[(family, band, m)]["images"] for m in methods if (family, band, m) in by)
            lines.append(f"| {family} | {band} | {count} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


def draws_table(summary: Sequence[dict], reference: str = REFERENCE) -> str:
    """A Markdown table of :func:`summarise_draws`: per method, best-threshold F1 per family and the
    shared-threshold F1 (mean over draws), each with its difference to ``reference`` and 95% interval."""
    families = list(dict.fromkeys(s["family"] for s in summary))
    by = {(s["family"], s["method"]): s for s in summary}
    methods = [m for m in dict.fromkeys(s["method"] for s in summary) if np.isfinite(by[(ALL, m)]["f1_best"].mean)]

    def cell(entry: dict, field: str) -> str:
        spread, diff = entry[field], entry.get(field + "_diff")
        if entry["method"] == reference or diff is None or not np.isfinite(diff.low):
            return f"{spread.mean:.3f}"
        return f"{spread.mean:.3f} ({diff.mean:+.3f}, {diff.low:+.3f}..{diff.high:+.3f})"

    head = ["method", *(f"F1 {f}" for f in families), "F1 shared threshold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        cells = [cell(by[(f, m)], "f1_best") for f in families] + [cell(by[(ALL, m)], "f1_shared")]
        lines.append("| " + " | ".join([m, *cells]) + " |")
    draws = len(summary[0]["per_draw"])
    note = (
        f"\nMeans over {draws} draws of the suite; in brackets the paired difference to {reference} "
        "and its 95% interval (Student's t over the draws).\n"
    )
    return "\n".join(lines) + "\n" + note


def write_draws(rows: Sequence[Row], out_dir: Path, reference: str = REFERENCE) -> list[Path]:
    """draws.csv (one line per draw, family and method: best- and shared-threshold F1) and draws.md
    (:func:`draws_table`)."""
    summary = summarise_draws(rows, reference)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, markdown = out_dir / "draws.csv", out_dir / "draws.md"
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["draw", "family", "method", "f1_best", "f1_shared"])
        for s in summary:
            for draw, (best, shared) in s["per_draw"].items():
                if np.isfinite(best):  # the detection methods
                    writer.writerow([draw, s["family"], s["method"], best, shared])
    markdown.write_text(draws_table(summary, reference), encoding="utf-8")
    return [table, markdown]


def write_csv(rows: Sequence[Row], summary: Sequence[dict], out_dir: Path) -> list[Path]:
    """results.csv (one line per image and method), summary.csv, summary.md (:func:`markdown_table`),
    datasets.md (:func:`dataset_table`) and, where images have size bands, bands.md (:func:`band_table`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results, table = out_dir / "results.csv", out_dir / "summary.csv"
    with results.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    with table.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "family",
                "method",
                "gain_mean",
                "gain_std",
                "fold_mean",
                "fold_std",
                "f1_fixed_mean",
                "f1_fixed_std",
                "f1_best_mean",
                "f1_best_std",
                "f1_shared_mean",
                "f1_shared_std",
            ]
        )
        for s in summary:
            writer.writerow(
                [s["family"], s["method"], *s["gain"], *s["fold"], *s["f1_fixed"], *s["f1_best"], *s["f1_shared"]]
            )
    markdown = out_dir / "summary.md"
    markdown.write_text(markdown_table(summary), encoding="utf-8")
    paths = [results, table, markdown]
    paths.append(out_dir / "datasets.md")
    paths[-1].write_text(dataset_table(rows), encoding="utf-8")
    bands = band_summary(rows)
    if bands:
        paths.append(out_dir / "bands.md")
        paths[-1].write_text(band_table(bands), encoding="utf-8")
    return paths


def write_figures(items: Sequence[EvalImage], rows: Sequence[Row], outputs: dict, out_dir: Path) -> list[Path]:
    """PNG figures: panels with detections, histograms with cumulative curves, F1 distributions."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    out_dir.mkdir(parents=True, exist_ok=True)
    detection = list(dict.fromkeys(r.method for r in rows if np.isfinite(r.f1_best)))
    datasets = list(dict.fromkeys(i.dataset for i in items))
    firsts = [next(i for i in items if i.dataset == d) for d in datasets]
    threshold = {(r.dataset, r.method): r.threshold for r in rows}
    paths = []

    fig = Figure(figsize=(3 * len(detection), 3 * len(firsts)))
    axes = fig.subplots(len(firsts), len(detection), squeeze=False)
    for row_axes, item in zip(axes, firsts):
        for ax, method in zip(row_axes, detection):
            image = outputs[(item.dataset, item.name, method)]
            found = metrics.detect_blobs(image, item.radius, threshold[(item.dataset, method)])
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.plot(item.centroids[:, 1], item.centroids[:, 0], "g.", markersize=3)
            for y, x in found:
                ax.add_patch(Circle((x, y), item.radius, color="r", fill=False, linewidth=0.6))
            ax.set_title(f"{item.dataset}: {method}", fontsize=8)
            ax.axis("off")
    fig.suptitle("green: ground truth, red: blob_log detections (best threshold)", fontsize=9)
    paths.append(_save(fig, out_dir / "panels.png"))

    methods = list(dict.fromkeys(r.method for r in rows))
    fig = Figure(figsize=(2.6 * len(methods), 2.6))
    axes = fig.subplots(1, len(methods), squeeze=False)
    for ax, method in zip(axes[0], methods):
        values = np.concatenate([outputs[(i.dataset, i.name, method)].ravel() for i in items])
        ax.hist(values, bins=64, range=(0, 1), color="0.5", density=True)
        twin = ax.twinx()
        ordered = np.sort(values)
        twin.plot(ordered, np.linspace(0, 1, len(ordered)), "b-", linewidth=1)
        twin.set_ylim(0, 1)
        ax.set_title(method, fontsize=8)
        ax.set_yticks([])
    fig.suptitle("pixel values in [0, 1]: histogram and cumulative curve", fontsize=9)
    paths.append(_save(fig, out_dir / "histograms.png"))

    fig = Figure(figsize=(1.6 * len(detection) + 1, 3))
    ax = fig.subplots()
    ax.boxplot([[r.f1_best for r in rows if r.method == m] for m in detection], tick_labels=detection)
    ax.set_ylabel("F1 (best threshold per dataset)")
    ax.set_ylim(0, 1)
    paths.append(_save(fig, out_dir / "f1.png"))
    return paths


def _save(fig, path: Path) -> Path:
    """Lay out and write a :class:`matplotlib.figure.Figure` (no pyplot: the caller's backend is left alone)."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
