"""What a batch guarantees: inputs never replaced, problems found before the compute with exit code 2,
interrupted and concurrent runs (real processes, real signals), models and pixels checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from conftest import blobs, sha256
from nunet.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in folder.iterdir() if p.is_file()}


@pytest.fixture
def pair(tmp_path) -> Path:
    """A folder with a.png and a.tif (same stem)."""
    import imageio.v3 as iio

    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", blobs((20, 24)).astype(np.float32))
    iio.imwrite(src / "a.png", blobs((20, 24), seed=1).clip(0, 255).astype(np.uint8))
    return src


def test_a_same_folder_template_never_replaces_an_input(pair):
    before = hashes(pair)
    result = run("batch", pair, pair, "-m", "nunet-test", "--name-template", "{stem}.tif", "--overwrite")
    assert result.exit_code == 2, result.output
    assert "a.tif" in result.output and "would replace an input file" in result.output
    assert hashes(pair) == before


def test_every_input_its_own_output_is_said_plainly(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "b.tif", blobs((20, 24)).astype(np.float32))
    result = run("batch", src, src, "-m", "nunet-test", "--name-template", "{stem}.tif")
    assert result.exit_code == 2
    assert "every matching input would be its own output" in result.output
    assert "no files matching" not in result.output


@pytest.mark.parametrize("template", ["../x_{stem}.tif", "/tmp/x_{stem}.tif", "sub/../../{stem}.tif"])
def test_a_template_leaving_the_output_folder_is_refused(pair, tmp_path, template):
    result = run("batch", pair, tmp_path / "out", "-m", "nunet-test", "--pattern", "*.png", "--name-template", template)
    assert result.exit_code == 2 and "leaves the output folder" in result.output
    assert not (tmp_path / "x_a.tif").exists() and not Path("/tmp/x_a.tif").exists()


def test_a_file_nunet_did_not_write_is_never_replaced(pair, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    tifffile.imwrite(out / "a.tif", np.zeros((4, 4), np.uint8))  # someone else's file
    before = sha256(out / "a.tif")
    result = run("batch", pair, out, "-m", "nunet-test", "--pattern", "*.png", "--overwrite")
    assert result.exit_code == 2 and "was not written by nunet" in result.output
    assert sha256(out / "a.tif") == before
    (out / "a.tif").unlink()
    assert run("batch", pair, out, "-m", "nunet-test", "--pattern", "*.png").exit_code == 0
    stamp = (out / "a.tif").stat().st_mtime_ns
    again = run("batch", pair, out, "-m", "nunet-test", "--pattern", "*.png", "--overwrite")
    assert again.exit_code == 0 and "1 filtered" in again.output  # its own earlier output: replaced
    assert (out / "a.tif").stat().st_mtime_ns != stamp


@pytest.mark.parametrize(
    "option, message",
    [
        (["--precision", "fp16", "--device", "cpu"], "'fp16' needs a GPU"),
        (["--batch-size", "0"], "greater than or equal to 1"),
        (["--tile-size", "-5"], "greater than or equal to 0"),
        (["--tile-size", "3"], "--tile-size: must be 0 (never tile) or at least 8 px, got 3"),
        (["--precision", "fp8"], "'fp8' is not one of"),
        (["--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_bad_options_are_usage_errors_before_the_batch(pair, tmp_path, option, message):
    result = run("batch", pair, tmp_path / "out", "-m", "nunet-test", *option)
    assert result.exit_code == 2 and message in result.output
    assert "failed" not in result.output and not (tmp_path / "out").exists()


def test_an_unwritable_report_is_found_before_the_compute(pair, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    for report in (blocker / "report.json", tmp_path):
        result = run("batch", pair, tmp_path / "out", "-m", "nunet-test", "--report", report)
        assert result.exit_code == 2 and "--report" in result.output, result.output
        assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the probe cannot fail here")
def test_a_read_only_output_folder_is_found_before_the_compute(pair, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    result = run("batch", pair, out, "-m", "nunet-test")
    assert result.exit_code == 2 and "not writable" in result.output


def test_filter_command_usage_errors(pair, tmp_path):
    into_folder = run("filter", pair / "a.tif", tmp_path, "-m", "nunet-test")
    assert into_folder.exit_code == 2 and "is a folder" in into_folder.output
    missing = run("filter", pair / "nope.tif", tmp_path / "o.tif", "-m", "nunet-test")
    assert missing.exit_code == 2 and "nope.tif: no such file" in missing.output


def test_a_negative_channel_counts_from_the_last(tmp_path):
    from nunet.io import Image, read_image, write_image

    src = tmp_path / "c.tif"
    write_image(Image(blobs((3, 20, 20)).astype(np.float32), "CYX"), src)
    last, minus_one = tmp_path / "last.tif", tmp_path / "m1.tif"
    assert run("filter", src, last, "-m", "nunet-test", "--channel", "2").exit_code == 0
    assert run("filter", src, minus_one, "-m", "nunet-test", "--channel", "-1").exit_code == 0
    np.testing.assert_array_equal(read_image(last).data, read_image(minus_one).data)


def test_nan_pixels_name_the_file_and_the_plane(tmp_path):
    from nunet.io import Image, write_image

    src = tmp_path / "in"
    src.mkdir()
    data = blobs((3, 20, 20)).astype(np.float32)
    data[1, 5, 5] = np.nan
    write_image(Image(data, "ZYX"), src / "nan.tif")
    result = run("batch", src, tmp_path / "out", "-m", "nunet-test")
    assert result.exit_code == 1
    assert "nan.tif" in result.output and "Z=1: contains NaN or infinite values" in result.output


def test_a_model_of_the_wrong_architecture_is_refused_at_load(tmp_path):
    import torch

    from nunet import load_model, save_model
    from nunet.errors import ModelError

    class Halve(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[..., ::2, ::2]

    class NaNs(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * float("nan")

    for module, message in (
        (torch.nn.Identity(), "returns its input unchanged"),
        (Halve(), "expected the same shape"),
        (NaNs(), "NaN or infinite values"),
    ):
        path = save_model(module, tmp_path / "fake.pt", name="fake", w=8.0)
        with pytest.raises(ModelError, match=message):
            load_model(path)
        src = tmp_path / "in"
        src.mkdir(exist_ok=True)
        tifffile.imwrite(src / "x.tif", blobs((16, 16)).astype(np.float32))
        result = run("batch", src, tmp_path / "out", "-m", path)
        assert result.exit_code == 2 and "fake.pt" in result.output


# ---- real processes and signals -------------------------------------------------------------


def _folder(tmp_path: Path, count: int, side: int = 160) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(count):
        tifffile.imwrite(src / f"img{i:02d}.tif", blobs((side, side), seed=i).astype(np.float32))
    return src


def _batch(src: Path, out: Path, model_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "NUNET_MODEL_PATH": str(model_dir), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "nunet", "batch", str(src), str(out), "-m", "nunet-test", "--device", "cpu", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a foreground user has it (a shell
        # starts background jobs, a CI run with &, with SIGINT ignored, and a child keeps that)
    )


def _wait_for_outputs(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(out.glob("img*.tif"))) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no output appeared"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])  # SIGTERM: timeout, Slurm, Kubernetes
def test_sigint_and_sigterm_print_the_summary_and_write_the_report(tmp_path, model_dir, stop):
    count = 60  # enough that a loaded machine, slow to send the signal, still interrupts the run
    src, out, report = _folder(tmp_path, count), tmp_path / "out", tmp_path / "report.json"
    proc = _batch(src, out, model_dir, "--report", str(report))
    _wait_for_outputs(out, 2, proc)
    proc.send_signal(stop)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "filtered" in stderr
    records = json.loads(report.read_text())
    done = sorted(p.name for p in out.glob("img*.tif"))
    assert 2 <= len(records) < count and sorted(Path(r["output"]).name for r in records if r["status"] == "ok") == done
    assert not list(out.glob(".*"))  # no claims, no .part left
    again = _batch(src, out, model_dir, "--report", str(report))
    assert again.wait(timeout=300) == 0
    assert len(list(out.glob("img*.tif"))) == count


@pytest.mark.slow
def test_a_killed_run_leaves_nothing_a_rerun_does_not_clean(tmp_path, model_dir):
    src, out = _folder(tmp_path, 30), tmp_path / "out"  # enough that the kill lands before the end
    reference = tmp_path / "reference"
    assert _batch(src, reference, model_dir).wait(timeout=300) == 0
    proc = _batch(src, out, model_dir)
    _wait_for_outputs(out, 1, proc)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    # what a kill in the middle of a write leaves: the claim and a .part of nunet's pattern
    victim = next(n for n in sorted(p.name for p in src.iterdir()) if not (out / n).exists())
    (out / f".{victim}.abc123.part").write_bytes(b"half a TIFF")
    (out / f".{victim}.nunet-claim").write_text(f"{proc.pid} {os.uname().nodename}\n")
    (out / ".notes.txt.part").write_text("not nunet's: kept")
    rerun = _batch(src, out, model_dir)
    assert rerun.wait(timeout=300) == 0, rerun.communicate()
    assert not list(out.glob(f".{victim}*")) and (out / ".notes.txt.part").exists()
    for name in sorted(p.name for p in src.iterdir()):
        np.testing.assert_array_equal(tifffile.imread(out / name), tifffile.imread(reference / name))


@pytest.mark.slow
def test_two_batches_into_one_folder_compute_each_image_once(tmp_path, model_dir):
    src, out = _folder(tmp_path, 10), tmp_path / "out"
    reports = [tmp_path / "r1.json", tmp_path / "r2.json"]
    procs = [_batch(src, out, model_dir, "--report", str(r)) for r in reports]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr  # no false failure
    records = [r for report in reports for r in json.loads(report.read_text())]
    computed = sorted(Path(r["input"]).name for r in records if r["status"] == "ok")
    assert computed == sorted(p.name for p in src.iterdir())  # each exactly once
    assert all(r["status"] in ("ok", "skipped") for r in records)
    assert not list(out.glob(".*"))


def test_messages_keep_square_brackets(tmp_path):
    """Paths with [ ] (as ImageJ users write them) are printed as they are, not eaten as console markup."""
    src = tmp_path / "in [day 1]"
    src.mkdir()
    result = run("batch", src, tmp_path / "out", "-m", "nunet-test")
    assert result.exit_code == 2 and "in [day 1]: no files matching" in result.output


def test_no_output_with_a_non_finite_pixel_is_written(tmp_path):
    """A model that passes the load-time probe (16 px wide) but gives NaN on wider planes: the file
    fails with the model named, and no output is written."""
    import torch

    from nunet import enhance, save_model
    from nunet.errors import ModelError

    class NaNsOnWidePlanes(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] > 20:
                return x * float("nan")
            return x * 0.5

    path = save_model(NaNsOnWidePlanes(), tmp_path / "wide.pt", name="wide", w=None)
    with pytest.raises(ModelError, match="wide: the filtered image has NaN or infinite pixels"):
        enhance(blobs((32, 32)), path, radius="off")
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "x.tif", blobs((32, 32)).astype(np.float32))
    result = run("batch", src, tmp_path / "out", "-m", path, "--radius", "off")
    assert result.exit_code == 1 and "NaN or infinite pixels" in result.output
    assert not (tmp_path / "out" / "x.tif").exists()


def test_claims_are_os_locks_stale_ones_are_taken_over_live_ones_respected(tmp_path, model_dir):
    """A leftover claim (another host's name, a live unrelated pid, a SIGKILLed holder) never blocks an
    output; a claim whose lock a live process holds is respected by batch, --overwrite and filter."""
    src = _folder(tmp_path, 2, side=48)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".img00.tif.nunet-claim").write_text("4242 another-host-that-restarted\n")
    (out / ".img01.tif.nunet-claim").write_text(f"{os.getppid()} {os.uname().nodename}\n")  # alive, not nunet
    (out / ".img01.tif.abc.part").write_bytes(b"left by the dead run")
    assert _batch(src, out, model_dir).wait(timeout=300) == 0
    assert {p.name for p in out.iterdir()} == {"img00.tif", "img01.tif"}  # outputs written, claims gone
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(out / '.img00.tif.nunet-claim')!r}, os.O_CREAT | os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(120)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (out / "img00.tif").read_bytes()
        proc = _batch(src, out, model_dir, "--overwrite")
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "claimed by another nunet run" in stderr
        assert (out / "img00.tif").read_bytes() == before  # held elsewhere: not recomputed
        single = run("filter", src / "img00.tif", out / "img00.tif", "-m", "nunet-test", "--overwrite")
        assert "claimed by another nunet run" in single.output
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock
        holder.wait()
    single = run("filter", src / "img00.tif", out / "img00.tif", "-m", "nunet-test", "--overwrite")
    assert single.exit_code == 0 and "claimed" not in single.output
    assert not list(out.glob(".*"))


def test_a_channel_the_file_lacks_is_a_usage_error_before_any_compute(tmp_path):
    from nunet.io import Image, write_image

    src = tmp_path / "two.tif"
    write_image(Image(blobs((2, 20, 20)).astype(np.float32), "CYX"), src)
    result = run("filter", src, tmp_path / "o.tif", "-m", "nunet-test", "--channel", "5")
    assert result.exit_code == 2 and "two.tif: --channel: channel 5 out of range" in result.output
    assert not (tmp_path / "o.tif").exists() and not list(tmp_path.glob(".*"))
