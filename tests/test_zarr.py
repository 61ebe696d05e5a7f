"""OME-Zarr in and out, plane tasks on a real dask LocalCluster, resuming after a real SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import blobs
from nunet import enhance
from nunet.cli import app
from nunet.io import Calibration, Image, read_image, write_image

pytest.importorskip("zarr", reason="the [zarr] extra is not installed")
import dask.array as da  # noqa: E402
import zarr  # noqa: E402
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402

from nunet.batch import cluster
from nunet.io import zarr as zarr_io  # noqa: E402
from nunet.options import FilterSettings  # noqa: E402

runner = CliRunner()
CAL = Calibration(0.25, 0.25, "micron", 1.5, 30.0, "sec")


def _settings(model_path, **kw) -> FilterSettings:
    return FilterSettings(model=str(model_path), device="cpu", **kw)


def _volume(path: Path, shape=(2, 3, 64, 72), axes="TZYX", ngff="0.5", chunks=None) -> np.ndarray:
    """A calibrated OME-Zarr image written by nunet's writer (optionally rechunked after)."""
    data = blobs(shape).astype(np.float32)
    write_image(Image(data, axes, CAL), path, ngff=ngff)
    if chunks is not None:  # rewrite level 0 with chunks that split the planes
        group = zarr.open_group(str(path), mode="r+")
        group.create_array("s0", data=data, chunks=chunks, overwrite=True)
    return data


def _ome(path: Path):
    """The first image node as ome_zarr's own reader sees it."""
    return list(Reader(parse_url(str(path)))())[0]


@pytest.fixture(scope="module")
def dask_cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        with Client(c) as client:
            yield c, client


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_round_trip_keeps_axes_scales_units_and_is_read_by_ome_zarr(tmp_path, ngff):
    path = tmp_path / "a.ome.zarr"
    data = _volume(path, ngff=ngff)
    image = read_image(path)
    assert image.axes == "TZYX" and image.calibration == Calibration(0.25, 0.25, "micron", 1.5, 30.0, "sec")
    np.testing.assert_array_equal(image.data, data)
    node = _ome(path)
    assert [a["name"] for a in node.metadata["axes"]] == ["t", "z", "y", "x"]
    assert node.metadata["axes"][2]["unit"] == "micrometer" and node.metadata["axes"][0]["unit"] == "second"
    assert [d.shape for d in node.data] == [(2, 3, 64, 72), (2, 3, 32, 36)]
    assert node.metadata["coordinateTransformations"][1][0]["scale"] == [30.0, 1.5, 0.5, 0.5]
    assert zarr_io.open_zarr(path).ngff == ngff


def test_level0_equals_enhance_exactly_and_the_pyramid_is_made_from_it(tmp_path, model_path):
    src, out = tmp_path / "in.ome.zarr", tmp_path / "out.ome.zarr"
    data = _volume(src)
    run = cluster.filter_zarr(src, out, _settings(model_path))
    assert (run.planes, run.filtered, run.resumed) == (6, 6, 0)
    expected = enhance(data, model_path, axes="TZYX", device="cpu")
    node = _ome(out)
    level0, level1 = (np.asarray(d) for d in node.data)
    np.testing.assert_array_equal(level0, expected)
    blocks = expected.reshape(2, 3, 32, 2, 36, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(level1, blocks, atol=1e-6)
    assert not (out / cluster.DONE_DIR).exists()
    assert read_image(out).calibration == read_image(src).calibration


def test_local_cluster_one_task_per_plane_model_loaded_on_workers_only(tmp_path, model_path, dask_cluster):
    from nunet.registry import clear_cache, load_count

    c, client = dask_cluster
    src, out = tmp_path / "in.ome.zarr", tmp_path / "out.ome.zarr"
    data = _volume(src, shape=(2, 4, 48, 56), axes="CZYX")
    client.run(clear_cache)
    loads_here = load_count()
    run = cluster.filter_zarr(src, out, _settings(model_path, channel=1), scheduler=c.scheduler_address)
    assert run.filtered == 4  # channel 1 of C=2: 4 planes
    reads = client.run(load_count)
    assert 1 <= sum(reads.values()) <= len(reads) and all(n <= 1 for n in reads.values())  # once per worker
    assert load_count() == loads_here  # never on the client
    expected = enhance(data[1], model_path, axes="ZYX", device="cpu")
    image = read_image(out)
    assert image.axes == "ZYX"
    np.testing.assert_array_equal(image.data, expected)


def test_workers_option_starts_a_local_cluster(tmp_path, model_path):
    src, out = tmp_path / "in.ome.zarr", tmp_path / "out.ome.zarr"
    data = _volume(src, shape=(3, 40, 48), axes="ZYX")
    result = runner.invoke(app, ["filter", str(src), str(out), "-m", str(model_path), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "3 plane(s) filtered" in result.output
    np.testing.assert_array_equal(read_image(out).data, enhance(data, model_path, axes="ZYX", device="cpu"))


def test_split_chunks_are_rechunked_to_planes_and_the_naive_way_differs(tmp_path, model_path):
    src = tmp_path / "split.ome.zarr"
    data = _volume(src, shape=(2, 64, 72), axes="ZYX", chunks=(1, 32, 36))
    assert zarr_io.open_zarr(src).chunks == (1, 32, 36)
    expected = enhance(data, model_path, axes="ZYX", device="cpu")
    cluster.filter_zarr(src, tmp_path / "out.ome.zarr", _settings(model_path))
    np.testing.assert_array_equal(read_image(tmp_path / "out.ome.zarr").data, expected)
    from nunet.registry import clear_cache, load_count

    lazy = da.from_zarr(zarr_io.open_zarr(src).open_array())
    clear_cache()
    graph = cluster.filter_dask(lazy, _settings(model_path))
    assert load_count() == 0  # building the graph (meta given) loads nothing
    assert graph.chunks == ((1, 1), (64,), (72,))
    np.testing.assert_array_equal(graph.compute(), expected)
    naive = lazy.map_blocks(cluster.filter_block, settings=_settings(model_path), dtype=np.float32).compute()
    assert np.abs(naive - expected).max() > 0.05  # per-chunk InstanceNorm statistics


def _cli(*args: str, env_models: Path) -> subprocess.Popen:
    env = dict(os.environ, NUNET_MODEL_PATH=str(env_models))
    return subprocess.Popen(
        [sys.executable, "-m", "nunet", "filter", *args], env=env, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_resume_after_sigkill_skips_done_planes_and_redoes_unrecorded_ones(tmp_path, model_path, model_dir):
    src, out = tmp_path / "in.ome.zarr", tmp_path / "out.ome.zarr"
    data = _volume(src, shape=(24, 96, 96), axes="ZYX")
    proc = _cli(str(src), str(out), "-m", str(model_path), "--device", "cpu", env_models=model_dir)
    deadline = time.time() + 120
    while len(list((out / cluster.DONE_DIR).glob("*"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = sorted(int(p.name) for p in (out / cluster.DONE_DIR).glob("*"))
    assert 3 <= len(done) < 24, "the run was not caught in the middle"
    assert not zarr_io.is_finished(out)  # no OME metadata: not an image yet
    with pytest.raises(Exception):
        _ome(out).data
    # a plane written without its record (as a kill between the write and the record leaves it) is redone
    zarr.open_group(str(out), mode="r+")["s0"][done[-1]] = 7.0
    (out / cluster.DONE_DIR / str(done[-1])).unlink()
    rerun = _cli(str(src), str(out), "-m", str(model_path), "--device", "cpu", env_models=model_dir)
    _, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert f"{24 - len(done) + 1} plane(s) filtered, {len(done) - 1} done earlier" in stderr
    np.testing.assert_array_equal(read_image(out).data, enhance(data, model_path, axes="ZYX", device="cpu"))


def test_unfinished_run_with_other_settings_foreign_store_and_input_are_refused(tmp_path, model_path):
    src, out = tmp_path / "in.ome.zarr", tmp_path / "out.ome.zarr"
    _volume(src, shape=(2, 32, 32), axes="ZYX")
    planes, _ = cluster.prepare_output(zarr_io.open_zarr(src), out, _settings(model_path), False)
    assert len(planes) == 2 and not zarr_io.is_finished(out)
    other = ["filter", str(src), str(out), "-m", str(model_path), "--invert"]
    result = runner.invoke(app, other)
    assert result.exit_code == 2 and "unfinished run with another input or settings" in result.output
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w")
    result = runner.invoke(app, ["filter", str(src), str(foreign), "-m", str(model_path)])
    assert result.exit_code == 2 and "not written by nunet" in result.output
    result = runner.invoke(app, ["filter", str(src), str(src), "-m", str(model_path), "--overwrite"])
    assert result.exit_code == 2 and "overwrite the input" in result.output
    assert zarr_io.is_finished(src)
    result = runner.invoke(app, ["filter", "a.tif", "b.tif", "--workers", "2"])
    assert result.exit_code == 2 and "need a zarr input and a zarr output" in result.output


def test_finished_output_is_skipped_then_replaced_with_overwrite(tmp_path, model_path):
    src, out = tmp_path / "in.ome.zarr", tmp_path / "out.ome.zarr"
    _volume(src, shape=(2, 32, 32), axes="ZYX")
    args = ["filter", str(src), str(out), "-m", str(model_path)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "skipped" in result.output
    result = runner.invoke(app, args + ["--overwrite", "--dtype", "uint8", "--ngff", "0.4"])
    assert result.exit_code == 0, result.output
    assert read_image(out).data.dtype == np.uint8 and zarr_io.open_zarr(out).ngff == "0.4"


def test_tiff_to_zarr_and_back(tmp_path, model_path):
    tif, ome, back = tmp_path / "a.tif", tmp_path / "a.ome.zarr", tmp_path / "b.tif"
    data = blobs((3, 40, 44)).astype(np.uint16)
    write_image(Image(data, "ZYX", CAL), tif)
    assert runner.invoke(app, ["filter", str(tif), str(ome), "-m", str(model_path)]).exit_code == 0
    assert runner.invoke(app, ["filter", str(ome), str(back), "-m", str(model_path)]).exit_code == 0
    first = enhance(data, model_path, axes="ZYX", device="cpu")
    np.testing.assert_array_equal(read_image(ome).data, first)
    np.testing.assert_array_equal(read_image(back).data, enhance(first, model_path, axes="ZYX", device="cpu"))
    assert read_image(back).calibration.unit == "micron" and read_image(back).calibration.z_spacing == 1.5


def test_batch_format_zarr_takes_zarr_stores_as_inputs(tmp_path, model_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _volume(src / "vol.ome.zarr", shape=(2, 32, 40), axes="ZYX")
    write_image(Image(blobs((36, 36)).astype(np.float32), "YX"), src / "plane.tif")
    result = runner.invoke(app, ["batch", str(src), str(out), "-m", str(model_path), "--format", "zarr", "-r"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["plane.ome.zarr", "vol.ome.zarr"]
    assert zarr_io.is_finished(out / "vol.ome.zarr") and read_image(out / "plane.ome.zarr").axes == "YX"
    rerun = runner.invoke(app, ["batch", str(src), str(out), "-m", str(model_path), "--format", "zarr"])
    assert rerun.exit_code == 0 and "2 skipped" in rerun.output


def test_without_the_extra_a_clear_message(tmp_path):
    code = "import sys; sys.modules['zarr'] = None\nfrom nunet.io.zarr import open_zarr\nopen_zarr('x.zarr')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "pip install 'nunet-filter[zarr]'" in done.stderr


def test_one_radius_for_the_whole_volume_as_enhance_estimates_it(tmp_path, model_path):
    """Large nuclei in a Zarr volume: the radius is estimated once (not per plane or task) and every
    plane is filtered at the model's scale, as enhance does for the whole array; a length uses the scale."""
    from scipy import ndimage as ndi

    from nunet.data.synth import synth_image

    planes = [ndi.zoom(synth_image("sparse", (40, 40), seed=s).image, 3.0, order=1) for s in range(3)]
    data = np.stack(planes).astype(np.float32)  # ZYX, nuclei of ~21 px
    src = tmp_path / "big.ome.zarr"
    write_image(Image(data, "ZYX", CAL), src)
    expected = enhance(data, model_path, axes="ZYX", device="cpu")
    assert not np.allclose(expected, enhance(data, model_path, axes="ZYX", device="cpu", radius="off"), atol=0.05)
    cluster.filter_zarr(src, tmp_path / "auto.ome.zarr", _settings(model_path))
    np.testing.assert_array_equal(read_image(tmp_path / "auto.ome.zarr").data, expected)
    lazy = da.from_array(data, chunks=(1, 60, 60))
    np.testing.assert_array_equal(cluster.filter_dask(lazy, _settings(model_path)).compute(), expected)
    microns = cluster.filter_dask(lazy, _settings(model_path, radius="5um"), CAL).compute()  # 0.25 um pixels: 20 px
    np.testing.assert_array_equal(microns, enhance(data, model_path, axes="ZYX", device="cpu", radius=20))


def test_zarr_faults_are_one_line_metadata_before_any_compute(tmp_path, model_dir):
    """A corrupt chunk: one line naming the store and the plane, exit 1, the planes done before kept;
    broken multiscales metadata: one line naming the store, exit 2, nothing written."""
    import json

    src = tmp_path / "in.ome.zarr"
    _volume(src, shape=(3, 32, 36), axes="ZYX")
    (src / "s0" / "c" / "2" / "0" / "0").write_bytes(b"not a compressed chunk")
    env_models = {"NUNET_MODEL_PATH": str(model_dir)}
    out = tmp_path / "out.ome.zarr"
    done = subprocess.run(
        [sys.executable, "-m", "nunet", "filter", str(src), str(out), "-m", "nunet-test"],
        capture_output=True,
        text=True,
        env={**os.environ, **env_models},
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "in.ome.zarr: plane Z=2: cannot read its pixels" in done.stderr and "Traceback" not in done.stderr
    broken = tmp_path / "broken.ome.zarr"
    _volume(broken, shape=(2, 32, 36), axes="ZYX")
    meta = json.loads((broken / "zarr.json").read_text())
    del meta["attributes"]["ome"]["multiscales"][0]["datasets"]
    (broken / "zarr.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["filter", str(broken), str(tmp_path / "b-out.ome.zarr"), "-m", "nunet-test"])
    assert result.exit_code == 2 and "broken OME-Zarr multiscales metadata" in result.output
    assert not (tmp_path / "b-out.ome.zarr").exists()


def test_a_bare_array_says_which_axes_were_guessed(tmp_path, model_path):
    from nunet.errors import OptionWarning

    store = tmp_path / "bare.zarr"
    zarr.create_array(str(store), data=blobs((2, 3, 2, 24, 28)).astype(np.float32))
    with pytest.warns(OptionWarning, match="bare zarr array names no axes; read as 'TZCYX'"):
        source = zarr_io.open_zarr(store)
    assert source.axes == "TZCYX"
    assert zarr_io.open_zarr(store, "TCZYX").axes == "TCZYX"  # --axes decides


def test_the_radius_second_look_runs_on_this_machine_whatever_device_the_tasks_ask_for():
    """The shipped fast model takes the second look; here, before any task, it runs on this machine's own
    device at fp32, so a device only the workers may have (CUDA on a CPU-only client) does not stop the
    estimate, and the radius is the one a CPU run fixes."""
    from scipy import ndimage as ndi

    from nunet.data.synth import synth_image
    from nunet.options import Radius

    planes = ndi.zoom(synth_image("sparse", (96, 96), seed=3).image, 3.0, order=1)[None]  # nuclei of ~21 px
    on_cpu = cluster.with_radius(FilterSettings(model="nunet-fast", device="cpu"), lambda: planes)
    elsewhere = cluster.with_radius(FilterSettings(model="nunet-fast", device="cuda", precision="fp16"), lambda: planes)
    assert Radius.parse(on_cpu.radius).pixels() > 14 and elsewhere.radius == on_cpu.radius
