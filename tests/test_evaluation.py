"""nunet eval: suites, draws, shared thresholds and the command, end to end on real files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from nunet.cli import app
from nunet.data.synth import (
    MODALITIES,
    synth_image,
)
from nunet.evaluation import baselines, metrics


def test_blob_candidates_detect_what_blob_log_detects():
    from skimage.feature import blob_log

    for seed, modality in enumerate(("sparse", "dense", "uneven")):
        image = baselines.minmax(synth_image(modality, (128, 128), seed=seed).image)
        sigma = 6.0 / np.sqrt(2)
        candidates = metrics.BlobCandidates.of(image, 6.0, 0.01)
        for threshold in (0.01, 0.05, 0.2):
            expected = blob_log(
                image,
                min_sigma=0.5 * sigma,
                max_sigma=1.5 * sigma,
                num_sigma=5,
                threshold=threshold,
                exclude_border=False,
            )[:, :2]
            got = candidates.detect(threshold)
            np.testing.assert_allclose(np.sort(got, axis=0), np.sort(expected, axis=0))


@pytest.mark.slow
def test_heldout_suite_is_deterministic_and_reports_shared_thresholds(tmp_path):
    from nunet import evaluation as evaluate
    from nunet.data.real import load_real_images

    real = load_real_images()
    first = evaluate.real_items(real, degraded_2d=2, degraded_planes=2)
    again = evaluate.real_items(real, degraded_2d=2, degraded_planes=2)
    assert [i.name for i in first] == [i.name for i in again]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.image, b.image)
    assert {i.family for i in first} == {"real", "real-degraded"}
    synthetic = evaluate.degraded_synthetic_items(n_per_modality=1, size=96)
    assert {i.family for i in synthetic} == {"synthetic-degraded"}
    items = [i for i in first if i.dataset != "stardist-3d"][:4] + synthetic[:2]
    rows, _ = evaluate.evaluate(items, ["nunet-test"])
    summary = evaluate.summarise(rows)
    assert {s["family"] for s in summary} == {"real", "real-degraded", "synthetic-degraded", "all"}
    for method in ("raw", "dog-tuned", "nunet-test"):
        own = [r for r in rows if r.method == method]
        assert len({r.threshold_shared for r in own}) == 1  # one threshold for every dataset
        # the shared threshold can never beat each dataset's own best on average
        assert np.mean([r.f1_shared for r in own]) <= np.mean([r.f1_best for r in own]) + 1e-9


def test_eval_suite_option_is_checked(tmp_path):
    bad = CliRunner().invoke(app, ["eval", str(tmp_path / "o"), "--suite", "nope"])
    assert bad.exit_code == 2 and "'nope' is not one of" in bad.output
    missing = CliRunner().invoke(app, ["eval", str(tmp_path / "o"), "--real-data", str(tmp_path / "none.whl")])
    assert missing.exit_code == 2 and "none.whl" in missing.output


@pytest.mark.slow
def test_eval_command_end_to_end(tmp_path):
    result = CliRunner().invoke(
        app, ["eval", str(tmp_path), "-m", "nunet-test", "--suite", "synthetic", "--n-images", "1", "--size", "96"]
    )
    assert result.exit_code == 0, result.output
    assert "nunet-test" in result.output and "dog" in result.output
    for name in ("results.csv", "summary.csv", "summary.md", "panels.png", "histograms.png", "f1.png"):
        assert (tmp_path / name).stat().st_size > 0
    with (tmp_path / "summary.csv").open() as fh:
        methods = [row["method"] for row in csv.DictReader(fh) if row["family"] == "all"]
    assert methods == ["raw", "log_lut", "gaussian", "median", "dog", "dog-tuned", "nunet-test", "truth-mask"]
    with (tmp_path / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["dataset"] for r in rows} == {*MODALITIES, "sparse-3d"}
    for dataset in {r["dataset"] for r in rows}:  # the tuned scales include 1.0, i.e. plain DoG
        f1 = {
            m: np.mean([float(r["f1_best"]) for r in rows if r["dataset"] == dataset and r["method"] == m])
            for m in ("dog", "dog-tuned")
        }
        assert f1["dog-tuned"] >= f1["dog"] - 1e-9
    from nunet.evaluation.run import DOG_SCALES

    assert {float(r["radius_scale"]) for r in rows if r["method"] == "dog-tuned"} <= set(DOG_SCALES)
    raw = [r for r in rows if r["method"] == "raw"]
    assert all(0.0 <= float(r["f1_best"]) <= 1.0 for r in raw)
    assert all(float(r["gain"]) == 0.0 for r in raw)
    ceiling = [r for r in rows if r["method"] == "truth-mask"]  # the ground truth itself: F1 of a perfect filter
    assert all(r["gain"] == "nan" for r in ceiling)
    sparse = [float(r["f1_best"]) for r in ceiling if r["dataset"] == "sparse"]
    assert sparse and min(sparse) >= 0.8


def test_spread_over_draws_is_the_mean_with_a_student_t_interval():
    from nunet.evaluation.stats import Spread

    spread = Spread.of([0.1, 0.2, 0.3])  # sd 0.1, t(0.975, 2 dof) = 4.3027
    assert spread.mean == pytest.approx(0.2)
    assert spread.high - spread.mean == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-4)
    assert spread.mean - spread.low == pytest.approx(spread.high - spread.mean)
    single = Spread.of([0.5])
    assert single.mean == 0.5 and np.isnan(single.low) and np.isnan(single.high)


def test_eval_draws_evaluates_each_draw_and_reports_means_and_differences(tmp_path):
    args = ["eval", str(tmp_path), "-m", "nunet-test", "--suite", "synthetic", "--n-images", "1", "--size", "96"]
    args += ["--stacks", "0", "--modality", "sparse", "--modality", "dense", "--seed", "4", "--draws", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with (tmp_path / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["draw"] for r in rows} == {"4", "5", "6"}
    with (tmp_path / "draws.csv").open() as fh:
        draws = [r for r in csv.DictReader(fh) if r["family"] == "all"]
    assert {r["method"] for r in draws} == {"raw", "dog", "dog-tuned", "nunet-test", "truth-mask"}
    f1 = {(r["method"], r["draw"]): float(r["f1_best"]) for r in draws}
    assert len({f1[("raw", d)] for d in ("4", "5", "6")}) > 1  # three different draws of the suite
    with (tmp_path / "summary.csv").open() as fh:
        summary = {r["method"]: r for r in csv.DictReader(fh) if r["family"] == "all"}
    for method in ("raw", "dog-tuned", "nunet-test"):  # the summary is the mean over the draws
        mean = np.mean([f1[(method, d)] for d in ("4", "5", "6")])
        assert float(summary[method]["f1_best_mean"]) == pytest.approx(mean)
    table = (tmp_path / "draws.md").read_text()
    difference = np.mean([f1[("nunet-test", d)] - f1[("dog-tuned", d)] for d in ("4", "5", "6")])
    line = next(x for x in table.splitlines() if x.startswith("| nunet-test |"))
    assert f"({difference:+.3f}, " in line and "3 draws" in table
    folder = CliRunner().invoke(
        app, ["eval", str(tmp_path / "o"), "--images", str(tmp_path), "--masks", str(tmp_path), "--draws", "2"]
    )
    assert folder.exit_code == 2 and "--draws" in folder.output
    assert CliRunner().invoke(app, [*args[:-1], "0"]).exit_code == 2


def test_eval_chooses_synthetic_modalities(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(tmp_path),
            "-m",
            "nunet-test",
            "--suite",
            "synthetic",
            "--n-images",
            "1",
            "--size",
            "96",
            "--modality",
            "thg_fibres",
            "--modality",
            "sparse",
            "--stacks",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    with (tmp_path / "results.csv").open() as fh:
        assert {r["dataset"] for r in csv.DictReader(fh)} == {"thg_fibres", "sparse"}
    bad = CliRunner().invoke(app, ["eval", str(tmp_path / "x"), "--suite", "synthetic", "--modality", "fibers"])
    assert bad.exit_code == 2 and "unknown modality 'fibers'" in bad.output


def test_eval_on_a_folder(tmp_path):
    import tifffile

    images, masks = tmp_path / "img", tmp_path / "lbl"
    images.mkdir()
    masks.mkdir()
    s = synth_image("sparse", (80, 80), seed=5)
    tifffile.imwrite(images / "a.tif", s.image)
    tifffile.imwrite(masks / "a.tif", s.labels)
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(tmp_path / "out"),
            "-m",
            "nunet-test",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--object-radius",
            "7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 datasets, 1 images" in result.output
    bad = CliRunner().invoke(app, ["eval", str(tmp_path / "o2"), "--images", str(images)])
    assert bad.exit_code == 2


def test_eval_with_centroid_csv(tmp_path):
    import tifffile

    images, points = tmp_path / "img", tmp_path / "csv"
    images.mkdir()
    points.mkdir()
    s = synth_image("sparse", (80, 80), seed=6)
    tifffile.imwrite(images / "b.tif", s.image)
    (points / "b.csv").write_text("y,x\n" + "".join(f"{y},{x}\n" for y, x in s.centroids))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(out),
            "-m",
            "nunet-test",
            "--images",
            str(images),
            "--centroids",
            str(points),
            "--object-radius",
            "7",
            "--augment",
        ],
    )
    assert result.exit_code == 0, result.output
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    raw = next(r for r in rows if r["method"] == "raw")
    assert {"nunet-test", "nunet-test+augment"} <= {r["method"] for r in rows}  # --augment adds a method
    assert raw["cr_before"] == "nan" and float(raw["f1_best"]) > 0.5
    with (out / "summary.csv").open() as fh:
        assert "truth-mask" not in {r["method"] for r in csv.DictReader(fh)}  # no mask, no ceiling


def test_models_see_dark_nuclei_as_users_run_them(model):
    """An item with dark nuclei runs the model with ``invert`` (the dark-nuclei radius estimate), not on
    an image inverted beforehand; the classical methods see the inverted image."""
    from nunet import enhance
    from nunet.evaluation.run import filtered
    from nunet.evaluation.suites import EvalImage

    image = synth_image("cells", (128, 128), seed=5)
    item = EvalImage("cells", "a", image.image, image.labels > 0, np.zeros((0, 2)), 6.0, True, "cells")
    np.testing.assert_array_equal(filtered(item, "m", {"m": model}), enhance(image.image, model, invert=True))
    np.testing.assert_allclose(filtered(item, "raw", {}), 1.0 - baselines.minmax(image.image), atol=1e-6)
