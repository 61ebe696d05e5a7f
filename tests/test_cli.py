"""The nunet / nunet-batch commands on real files: outputs, skipping, bad inputs, reports, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from conftest import blobs, sha256
from nunet import enhance
from nunet.cli import app
from nunet.io import Calibration, Image, read_image, write_image
from nunet.registry.models import DEFAULT_MODEL

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def folder(tmp_path) -> Path:
    """An input folder: a calibrated hyperstack, a 2D uint8 TIFF, a PNG, a bad file and a text file."""
    src = tmp_path / "in"
    src.mkdir()
    cal = Calibration(0.5, 0.5, "micron", 2.0, 10.0)
    write_image(Image(blobs((2, 3, 32, 40)).astype(np.uint16), "TZYX", cal), src / "stack.tif")
    tifffile.imwrite(src / "plane.tif", blobs((30, 34)).clip(0, 255).astype(np.uint8))
    import imageio.v3 as iio

    iio.imwrite(src / "photo.png", blobs((24, 24)).clip(0, 255).astype(np.uint8))
    (src / "broken.tif").write_bytes(b"II*\x00garbage")
    (src / "notes.txt").write_text("not matched by the patterns")
    return src


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in folder.rglob("*") if p.is_file()}


def test_filter_writes_calibrated_result_equal_to_enhance(folder, tmp_path, model):
    out = tmp_path / "o.tif"
    result = run("filter", folder / "stack.tif", out, "--model", "nunet-test")
    assert result.exit_code == 0, result.output
    written = read_image(out)
    source = read_image(folder / "stack.tif")
    assert written.axes == "TZYX" and written.data.dtype == np.float32
    assert written.calibration == source.calibration
    np.testing.assert_allclose(written.data, enhance(source, model), atol=1e-6)


def test_augment_option_of_filter_and_batch(tmp_path, model):
    src = tmp_path / "in"
    src.mkdir()
    data = blobs((36, 40)).astype(np.float32)
    write_image(Image(data, "YX"), src / "a.tif")
    expected = enhance(data, model, augment=True)
    assert run("filter", src / "a.tif", tmp_path / "one.tif", "-m", "nunet-test", "--augment").exit_code == 0
    assert run("batch", src, tmp_path / "out", "-m", "nunet-test", "--augment").exit_code == 0
    for written in (tmp_path / "one.tif", tmp_path / "out" / "a.tif"):
        np.testing.assert_allclose(read_image(written).data, expected, atol=1e-6)
    assert np.abs(expected - enhance(data, model)).max() > 1e-3


def test_filter_uint8_output_and_channel(tmp_path):
    src = tmp_path / "c.tif"
    write_image(Image(blobs((3, 20, 20)).astype(np.float32), "CYX"), src)
    result = run("filter", src, tmp_path / "o.tif", "-m", "nunet-test", "--channel", "0,2", "--dtype", "uint8")
    assert result.exit_code == 0, result.output
    out = read_image(tmp_path / "o.tif")
    assert out.axes == "CYX" and out.data.shape == (2, 20, 20) and out.data.dtype == np.uint8


def test_filter_never_overwrites_its_input(folder):
    before = sha256(folder / "plane.tif")
    result = run("filter", folder / "plane.tif", folder / "plane.tif", "-m", "nunet-test", "--overwrite")
    assert result.exit_code == 2
    assert "would overwrite the input" in result.output
    assert sha256(folder / "plane.tif") == before


def test_batch_goes_past_bad_file_and_reports(folder, tmp_path):
    before = hashes(folder)
    out, report = tmp_path / "out", tmp_path / "report.json"
    result = run("batch", folder, out, "-m", "nunet-test", "--report", report)
    assert result.exit_code == 1
    assert "3 filtered" in result.output and "1 failed" in result.output
    assert "FAILED" in result.output and "broken.tif: " in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["photo.tif", "plane.tif", "stack.tif"]
    records = {Path(r["input"]).name: r for r in json.loads(report.read_text())}
    assert set(records) == {"broken.tif", "photo.png", "plane.tif", "stack.tif"}
    assert records["stack.tif"]["status"] == "ok" and records["stack.tif"]["axes"] == "TZYX"
    assert records["stack.tif"]["shape"] == [2, 3, 32, 40] and records["stack.tif"]["seconds"] > 0
    assert records["broken.tif"]["status"] == "failed" and "broken.tif" in records["broken.tif"]["error"]
    assert hashes(folder) == before  # inputs untouched
    assert not list(out.rglob("*.part"))


def test_verbose_shows_traceback(folder, tmp_path):
    result = run("batch", folder, tmp_path / "out", "-m", "nunet-test", "--verbose")
    assert "Traceback" in result.output


def test_existing_outputs_are_skipped_unless_overwrite(folder, tmp_path):
    out = tmp_path / "out"
    run("batch", folder, out, "-m", "nunet-test", "--pattern", "*.png")
    stamp = (out / "photo.tif").stat().st_mtime_ns
    second = run("batch", folder, out, "-m", "nunet-test", "--pattern", "*.png")
    assert second.exit_code == 0 and "1 skipped" in second.output and "exists" in second.output
    assert (out / "photo.tif").stat().st_mtime_ns == stamp
    third = run("batch", folder, out, "-m", "nunet-test", "--pattern", "*.png", "--overwrite")
    assert third.exit_code == 0 and "1 filtered" in third.output


def test_dry_run_writes_nothing(folder, tmp_path):
    result = run("batch", folder, tmp_path / "out", "-m", "nunet-test", "--dry-run")
    assert result.exit_code == 0
    assert "would filter" in result.output and "4 to filter (dry run)" in result.output
    assert not (tmp_path / "out").exists()


def test_recursive_mirrors_subfolders(folder, tmp_path):
    sub = folder / "day1" / "well2"
    sub.mkdir(parents=True)
    shutil.copy(folder / "plane.tif", sub / "deep.tif")
    out = tmp_path / "out"
    result = run("batch", folder, out, "-m", "nunet-test", "-r", "--pattern", "*.tif")
    assert (out / "day1" / "well2" / "deep.tif").is_file()
    assert result.exit_code == 1  # broken.tif


def test_output_inside_input_is_not_reread(folder):
    out = folder / "filtered"
    first = run("batch", folder, out, "-m", "nunet-test", "-r", "--pattern", "*.png")
    assert first.exit_code == 0 and "1 filtered" in first.output
    again = run("batch", folder, out, "-m", "nunet-test", "-r", "--pattern", "*.png", "--pattern", "*.tif", "--dry-run")
    assert "3 to filter (dry run), 0 filtered, 1 skipped" in again.output
    assert f"would filter {out / 'photo.tif'}" not in again.output


def test_output_equal_to_input_uses_suffix_and_skips_own_outputs(folder):
    before = hashes(folder)
    result = run("batch", folder, folder, "-m", "nunet-test", "--pattern", "*.png", "--pattern", "plane.tif")
    assert result.exit_code == 0, result.output
    assert (folder / "photo_nunet.tif").is_file() and (folder / "plane_nunet.tif").is_file()
    assert all(sha256(folder / name) == digest for name, digest in before.items())
    again = run("batch", folder, folder, "-m", "nunet-test", "--pattern", "*.tif", "--dry-run")
    assert "_nunet_nunet" not in again.output


def test_name_template_and_collisions(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", blobs((16, 16)).astype(np.float32))
    import imageio.v3 as iio

    iio.imwrite(src / "a.png", blobs((16, 16)).clip(0, 255).astype(np.uint8))
    result = run("batch", src, tmp_path / "out", "-m", "nunet-test")
    assert result.exit_code == 2 and "a.tif and a.png would both be written to" in result.output.replace("\n", " ")
    assert not (tmp_path / "out").exists()  # found before any compute
    named = run("batch", src, tmp_path / "out2", "-m", "nunet-test", "--name-template", "{name}_{model}.tif")
    assert named.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["a.png_nunet-test.tif", "a.tif_nunet-test.tif"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["batch", "{empty}", "{out}", "-m", "nunet-test"], "no files matching"),
        (["batch", "{missing}", "{out}", "-m", "nunet-test"], "input folder not found"),
        (["batch", "{input}", "{out}", "-m", "no-such-model"], "unknown model 'no-such-model'; available:"),
        (["batch", "{input}", "{out}", "-m", "nunet-test", "--dtype", "int8"], "int8"),
        (["filter", "{input}/plane.tif", "{out}/o.tif", "-m", "missing/file.pt"], "model file not found"),
    ],
)
def test_cannot_start_exits_2(folder, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    values = {"empty": tmp_path / "empty", "out": tmp_path / "out", "missing": tmp_path / "missing", "input": folder}
    result = run(*[a.format(**values) for a in args])
    assert result.exit_code == 2
    assert message in result.output


def test_a_file_where_the_output_folder_should_be_is_found_before_the_compute(folder, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    for out in (blocker / "out", blocker):
        result = run("batch", folder, out, "-m", "nunet-test", "--pattern", "*.png")
        assert result.exit_code == 2, result.output
        assert "file stands where a folder" in result.output or "is not a folder" in result.output
        assert "filtered" not in result.output and "File exists" not in result.output


def test_console_scripts_and_models_table(folder, tmp_path, model_dir):
    env = {**os.environ, "NUNET_MODEL_PATH": str(model_dir)}
    bindir = Path(sys.executable).parent
    listed = subprocess.run([bindir / "nunet", "models"], capture_output=True, text=True, env=env, check=True)
    assert "nunet-test" in listed.stdout and "8" in listed.stdout and "test fixture" in listed.stdout
    assert "family" in listed.stdout and f"default: {DEFAULT_MODEL}" in listed.stdout  # family column, default named
    done = subprocess.run(
        [bindir / "nunet-batch", folder, tmp_path / "out", "--model", "nunet-test", "--pattern", "*.png"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "photo.tif").is_file()
    usage = subprocess.run([bindir / "nunet-batch"], capture_output=True, text=True, env=env)
    assert usage.returncode == 2


def test_batch_pipeline_keeps_order_and_matches_single_file_results(tmp_path, model):
    from nunet.batch.run import run_batch
    from nunet.options import FilterSettings

    src = tmp_path / "in"
    src.mkdir()
    names = [f"img{i:02d}.tif" for i in range(7)]
    for i, name in enumerate(names):
        tifffile.imwrite(src / name, blobs((24 + 4 * i, 28)).astype(np.float32))
    (src / "img03.tif").write_bytes(b"II*\x00garbage")  # a bad file in the middle
    seen: list[str] = []
    records = run_batch(
        src,
        tmp_path / "out",
        FilterSettings(model="nunet-test", device="cpu"),
        on_file=lambda r: seen.append(Path(r.input).name),
    ).records
    assert [Path(r.input).name for r in records] == names == seen
    assert [r.status for r in records] == ["ok"] * 3 + ["failed"] + ["ok"] * 3
    for name in names[:3] + names[4:]:
        expected = enhance(tifffile.imread(src / name), model, device="cpu")
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / name), expected)


def test_radius_in_microns_on_a_calibrated_tiff_is_converted_printed_and_reported(tmp_path, model):
    from scipy import ndimage as ndi

    from nunet.data.synth import synth_image

    src = tmp_path / "in"
    src.mkdir()
    big = ndi.zoom(synth_image("sparse", (64, 64), seed=2).image, 3.0, order=1)  # nuclei of ~21 px
    write_image(Image(big.astype(np.float32), "YX", Calibration(0.5, 0.5, "micron")), src / "big.tif")
    result = run("filter", src / "big.tif", tmp_path / "o.tif", "--model", "nunet-test", "--radius", "10um", "-v")
    assert result.exit_code == 0, result.output
    assert "nucleus radius 20.0 px" in result.output  # 10 um at 0.5 um per pixel
    image = read_image(src / "big.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "o.tif").data, enhance(image, model, radius=20))
    result = run("filter", src / "big.tif", tmp_path / "auto.tif", "--model", "nunet-test", "-v")
    assert result.exit_code == 0 and "nucleus radius" in result.output  # auto: the estimate is printed
    report = tmp_path / "report.json"
    result = run("batch", src, tmp_path / "out", "--model", "nunet-test", "--radius", "off", "--report", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())[0]["radius"] is None
    assert json.loads(report.read_text())[0]["model"] == "nunet-test"  # which model filtered it
    result = run("batch", src, tmp_path / "out2", "--model", "nunet-test", "--radius", "5um", "--report", report)
    assert json.loads(report.read_text())[0]["radius"] == pytest.approx(10.0)
    result = run("filter", src / "big.tif", tmp_path / "x.tif", "--model", "nunet-test", "--radius", "wide")
    assert result.exit_code == 2 and "--radius" in result.output and not (tmp_path / "x.tif").exists()


def test_an_output_name_nunet_cannot_write_is_refused_before_any_compute(folder, tmp_path):
    for name in ("o.png", "o.bmp", "o.jpg"):
        result = run("filter", folder / "plane.tif", tmp_path / name, "--model", "nunet-test")
        assert result.exit_code == 2 and f"{name}: nunet writes .tif/.tiff" in result.output
        assert not (tmp_path / name).exists()
    result = run("batch", folder, tmp_path / "out", "--model", "nunet-test", "--name-template", "{stem}.png")
    assert result.exit_code == 2 and "--name-template" in result.output and not (tmp_path / "out").exists()


def test_the_default_patterns_take_jpeg_files(tmp_path):
    import imageio.v3 as iio

    src = tmp_path / "in"
    src.mkdir()
    iio.imwrite(src / "photo.jpeg", blobs((24, 24)).clip(0, 255).astype(np.uint8))
    result = run("batch", src, tmp_path / "out", "--model", "nunet-test")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "photo.tif").is_file()


def test_bf16_on_a_cpu_without_native_bf16_is_a_warning(folder, tmp_path):
    from nunet.core.runtime import cpu_info

    result = run("filter", folder / "plane.tif", tmp_path / "o.tif", "--model", "nunet-test", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    # the warning names the cause where bf16 is emulated, and is absent where it is native
    assert ("warning: --precision bf16: this CPU has no native bf16" in result.output) != cpu_info().native_bf16


def test_the_report_gives_absolute_paths_for_relative_folders(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("batch", "in", "out", "--model", "nunet-test", "--pattern", "*.png", "--report", "report.json")
    assert result.exit_code == 0, result.output
    (record,) = json.loads((tmp_path / "report.json").read_text())
    assert Path(record["input"]).is_absolute() and Path(record["output"]).is_absolute()
    assert Path(record["output"]) == tmp_path / "out" / "photo.tif"
