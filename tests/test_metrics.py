"""Metrics, classical baselines, the synthetic generator and `nunet eval`, on hand-made data."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from nunet.cli import app
from nunet.data.synth import MODALITIES, PRESETS, fibres, synth_image, synth_suite
from nunet.evaluation import baselines, metrics


def test_contrast_ratio_of_a_two_level_image():
    image = np.full((10, 10), 0.2, np.float32)
    mask = np.zeros((10, 10), bool)
    mask[2:5, 2:5] = True
    image[mask] = 0.8
    assert metrics.contrast_ratio(image, mask) == pytest.approx(4.0)
    image[~mask] = 0.0
    assert metrics.contrast_ratio(image, mask) == pytest.approx(0.8 * 255)  # background floored at 1/255
    with pytest.raises(ValueError):
        metrics.contrast_ratio(image, np.ones((10, 10), bool))


def test_matching_f1():
    truth = np.array([[10, 10], [30, 30], [50, 50]], float)
    assert metrics.match(truth, truth, 3).f1 == 1.0
    empty = metrics.match(np.zeros((0, 2)), truth, 3)
    assert empty.f1 == 0.0 and empty.false_negatives == 3
    half = metrics.match(np.array([[11, 10], [90, 90]], float), truth, 3)
    assert (half.true_positives, half.false_positives, half.false_negatives) == (1, 1, 2)
    assert half.f1 == pytest.approx(2 / 5)


def test_matching_is_optimal_not_greedy():
    # greedy nearest-first pairs d0 with t1 (distance 1) and leaves d1 unmatched; optimal matches both
    truth = np.array([[0, 0], [0, 2]], float)
    detections = np.array([[0, 1.9], [0, 3.5]], float)
    assert metrics.match(detections, truth, 2.0).true_positives == 2


def test_blob_log_finds_gaussian_blobs():
    yy, xx = np.mgrid[0:64, 0:64]
    centres = np.array([[16, 16], [40, 44], [20, 50]])
    image = sum(np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 3.0**2)) for y, x in centres)
    found = metrics.detect_blobs(image / image.max(), radius=4.0, threshold=0.1)
    assert metrics.match(found, centres, 3).f1 == 1.0


@pytest.mark.parametrize("name", baselines.CLASSICAL)
def test_classical_filters_give_unit_range(name):
    image = synth_image("sparse", (64, 64), seed=0).image
    out = baselines.classical(name, image, radius=6.0)
    assert out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0 and out.std() > 0


def test_dog_peaks_on_a_blob_of_its_radius():
    yy, xx = np.mgrid[0:64, 0:64]
    disc = (((yy - 32) ** 2 + (xx - 32) ** 2) <= 36).astype(np.float32)
    out = baselines.dog(disc, radius=6.0)
    assert out[32, 32] == out.max() == 1.0
    assert out[32, 32 + 9] < 0.5 and out[0, 0] < 0.5  # the surround just outside the disc and far away


@pytest.mark.parametrize("modality", PRESETS)
def test_synthetic_images_are_seeded_and_consistent(modality):
    a, b = synth_image(modality, (96, 96), seed=3), synth_image(modality, (96, 96), seed=3)
    np.testing.assert_array_equal(a.image, b.image)
    assert len(a.centroids) == len(np.setdiff1d(np.unique(a.labels), [0])) > 0
    inside, outside = a.image[a.labels > 0].mean(), a.image[a.labels == 0].mean()
    assert (inside < outside) if PRESETS[modality].dark_blobs else (inside > outside)
    assert not np.array_equal(a.image, synth_image(modality, (96, 96), seed=4).image)


def test_a_fibre_is_a_long_thin_bright_path():
    rng = np.random.default_rng(2)
    image = fibres((128, 128), 256**2 / 128**2 * 1, rng, length=(60.0, 60.0))  # exactly one fibre
    drawn = image > 0.2 * image.max()
    ys, xs = np.nonzero(drawn)
    extent = np.hypot(np.ptp(ys), np.ptp(xs))
    assert image.min() >= 0 and extent > 25  # long (part may leave the field) ...
    assert drawn.sum() < 5 * extent  # ... and a few pixels wide
    assert fibres((4, 64, 64), 400, rng).shape == (4, 64, 64)


def test_thg_fibres_background_is_fibrous_and_nuclei_dark():
    def bright_tail(s):  # thin bright fibres on a dimmer ground: a long upper tail of the background
        background = s.image[s.labels == 0]
        median = np.median(background)
        return (np.percentile(background, 99) - median) / (median - np.percentile(background, 1))

    s = synth_image("thg_fibres", (128, 128), seed=1)
    assert bright_tail(s) > 2.5 > bright_tail(synth_image("thg", (128, 128), seed=1))
    assert s.image[s.labels > 0].mean() < 0.6 * s.image[s.labels == 0].mean()


def test_suite_seeds_do_not_depend_on_the_chosen_modalities():
    full = synth_suite(1, (64, 64))
    alone = synth_suite(1, (64, 64), modalities=("thg",))
    np.testing.assert_array_equal(alone[0].image, full[MODALITIES.index("thg")].image)
    with pytest.raises(ValueError, match="unknown modality 'nope'"):
        synth_suite(1, (64, 64), modalities=("nope",))


def test_synthetic_stack_is_3d():
    stack = synth_image("sparse", (6, 64, 64), seed=1)
    assert stack.image.shape == (6, 64, 64) and stack.centroids.shape[1] == 3


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
