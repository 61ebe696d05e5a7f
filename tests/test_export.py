"""bioimage.io export: a real package of a real TorchScript model, checked by the real bioimageio test, offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("bioimageio.core", reason="the bioimageio extra is not installed")
from nunet.cli import app  # noqa: E402


@pytest.fixture(scope="module")
def package(tmp_path_factory, model_dir) -> Path:
    os.environ["NUNET_MODEL_PATH"] = str(model_dir)
    out = tmp_path_factory.mktemp("export") / "nunet-test.zip"
    result = CliRunner().invoke(app, ["export", "nunet-test", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _offline(command: list[str]) -> list[str]:
    """The command in a network namespace of its own where that is allowed (root), else as it is."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n", *command]
    return command


@pytest.mark.slow
def test_the_package_passes_bioimageio_test_offline(package):
    import zipfile

    names = set(zipfile.ZipFile(package).namelist())
    assert {
        "rdf.yaml",
        "weights.pt",
        "weights.onnx",
        "test_input.npy",
        "test_output.npy",
        "cover.png",
        "README.md",
        "sample_input.tif",
        "sample_output.tif",
    } <= names
    bioimageio = Path(sys.executable).parent / "bioimageio"
    done = subprocess.run(
        _offline([str(bioimageio), "test", str(package)]),
        capture_output=True,
        text=True,
        env={**os.environ, "BIOIMAGEIO_CACHE_PATH": str(package.parent / "cache")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Reproduce test outputs from test inputs (onnx)" in done.stdout
    readme = zipfile.ZipFile(package).read("README.md").decode()
    assert "Do not run this model block-wise" in readme
    assert "trained on nuclei of a median radius of about 7 px" in readme  # the fixture records no radius: 7


def test_onnx_weights_equal_torchscript(tmp_path, model):
    from nunet.integrations.bioimageio import ONNX_TOLERANCE, export_onnx

    worst = export_onnx(model.module, tmp_path / "m.onnx", sizes=((8, 8), (36, 52), (96, 64)))
    assert worst <= ONNX_TOLERANCE


@pytest.mark.slow
def test_exported_preprocessing_reproduces_enhance(package, model):
    """bioimageio.core runs the package (its own pre/postprocessing, then the weights) on the test input:
    the result equals nunet.enhance on the same raw plane."""
    from bioimageio.core import create_prediction_pipeline, load_description, predict

    from nunet import enhance

    descr = load_description(package)
    raw = _member(package, "test_input.npy")
    for weights in ("torchscript", "onnx"):
        sample = predict(model=create_prediction_pipeline(descr, weight_format=weights), inputs={"input": raw})
        got = np.asarray(sample.members["output"].data).reshape(raw.shape[-2:])
        np.testing.assert_allclose(got, enhance(raw[0, 0], model, axes="YX"), atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("fill", ["zero", "edge", "mean"])
def test_a_framed_model_is_exported_with_its_frame(tmp_path, fill):
    """A model trained with a frame (metadata frame_pad): both weight formats run it inside the frame,
    as nunet.enhance does."""
    from bioimageio.core import create_prediction_pipeline, load_description, predict

    from nunet import enhance, load_model, save_model
    from nunet.core.model import untrained
    from nunet.integrations.bioimageio import export_bioimageio

    path = tmp_path / "framed.pt"
    save_model(untrained(seed=1), path, name="framed", w=None, frame_pad=8, frame_fill=fill)
    package = export_bioimageio(str(path), tmp_path / "framed.zip")
    raw = _member(package, "test_input.npy")
    expected = enhance(raw[0, 0], load_model(path), axes="YX")
    np.testing.assert_allclose(_member(package, "test_output.npy")[0, 0], expected, atol=1e-6)
    descr = load_description(package)
    for weights in ("torchscript", "onnx"):
        sample = predict(model=create_prediction_pipeline(descr, weight_format=weights), inputs={"input": raw})
        got = np.asarray(sample.members["output"].data).reshape(raw.shape[-2:])
        np.testing.assert_allclose(got, expected, atol=1e-3)
    save_model(untrained(seed=1), tmp_path / "plain.pt", name="plain", w=None)
    assert np.abs(enhance(raw[0, 0], str(tmp_path / "plain.pt"), axes="YX") - expected).max() > 0.05


@pytest.mark.slow
def test_the_shipped_fast_model_passes_bioimageio_test_offline(tmp_path):
    """``nunet-fast`` (the other architecture: narrower, four thinner residual blocks, framed): exported as
    the default is, the real ``bioimageio test`` reproduces its outputs with both weight formats."""
    from nunet.integrations.bioimageio import export_bioimageio

    package = export_bioimageio("nunet-fast", tmp_path / "nunet-fast.zip")
    bioimageio = Path(sys.executable).parent / "bioimageio"
    done = subprocess.run(
        _offline([str(bioimageio), "test", str(package)]),
        capture_output=True,
        text=True,
        env={**os.environ, "BIOIMAGEIO_CACHE_PATH": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Reproduce test outputs from test inputs (onnx)" in done.stdout


def _member(package: Path, name: str) -> np.ndarray:
    import io
    import zipfile

    return np.load(io.BytesIO(zipfile.ZipFile(package).read(name)))


def test_export_usage_errors(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["export", "nunet-test", str(tmp_path / "x.zip"), "--format", "onnx"])
    assert bad.exit_code == 2 and "'onnx' is not one of" in bad.output
    not_zip = runner.invoke(app, ["export", "nunet-test", str(tmp_path / "x.tar")])
    assert not_zip.exit_code == 2 and "must be a .zip" in not_zip.output


def test_without_the_extra_the_message_names_it(tmp_path, model_dir):
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from nunet.cli import main; sys.argv = ['nunet', 'export', 'nunet-test', sys.argv[1]]; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "x.zip")],
        capture_output=True,
        text=True,
        env={**os.environ, "NUNET_MODEL_PATH": str(model_dir)},
    )
    assert done.returncode == 2 and "pip install 'nunet-filter[bioimageio]'" in done.stderr


@pytest.mark.slow
def test_export_never_clobbers_checks_first_and_is_reproducible(package, tmp_path):
    from nunet.integrations.bioimageio import written_by_nunet_export

    assert written_by_nunet_export(package)
    precious = tmp_path / "x.zip"
    precious.write_text("precious")
    result = CliRunner().invoke(app, ["export", "nunet-test", str(precious), "--format", "torchscript"])
    assert result.exit_code == 2 and "--overwrite" in result.output and precious.read_text() == "precious"
    result = CliRunner().invoke(app, ["export", "nunet-test", str(precious), "--overwrite"])
    assert result.exit_code == 2 and "not a package nunet exported" in result.output
    assert precious.read_text() == "precious"
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    result = CliRunner().invoke(app, ["export", "nunet-test", str(blocker / "p.zip")])
    assert result.exit_code == 2 and "blocker" in result.output  # before any work
    again = tmp_path / "again.zip"
    result = CliRunner().invoke(app, ["export", "nunet-test", str(again)])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == package.read_bytes()  # the same model: byte-identical packages
    result = CliRunner().invoke(app, ["export", "nunet-test", str(again), "--overwrite"])
    assert result.exit_code == 0 and again.read_bytes() == package.read_bytes()
    assert not list(tmp_path.glob(".*.part"))
