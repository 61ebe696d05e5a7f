"""Tiled filtering: seam-free and equal to the whole plane, automatic by device, scratch space, progress."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch

from conftest import blobs, enhance_native
from nunet import enhance
from nunet.core.preprocess import normalise_plane, pad_plane
from nunet.core.tiling import tiled_forward
from nunet.errors import UsageError


@pytest.mark.parametrize(("shape", "tile"), [((180, 204), 64), ((36, 44), 8), ((70, 33), 20)])
def test_tiled_output_equals_whole_plane(model, shape, tile, tmp_path, monkeypatch):
    """Exact whole-plane statistics and padding, at any tile size; temporary files cleaned up."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    img = blobs(shape, seed=3, n=30)
    whole = enhance(img, model, tile_size=0)
    tiled = enhance(img, model, tile_size=tile)
    assert np.abs(whole - tiled).max() <= 1e-5
    assert list(tmp_path.iterdir()) == []


def test_tiled_bf16_is_as_close_to_fp32_as_whole_plane_bf16(model):
    img = blobs((96, 80), seed=5, n=12)
    reference = enhance(img, model, tile_size=0)
    whole = enhance(img, model, tile_size=0, precision="bf16")
    tiled = enhance(img, model, tile_size=32, precision="bf16")
    assert np.abs(tiled - reference).max() <= 2 * np.abs(whole - reference).max() + 1e-3


@pytest.mark.slow
def test_naive_tiling_would_show_seams(model):
    """Control for the test above: tiles run independently (own InstanceNorm stats) differ a lot."""
    img = blobs((128, 128), seed=4, n=20)
    x = torch.from_numpy(pad_plane(normalise_plane(img)))[None, None]
    with torch.inference_mode():
        whole = model(x)
        exact = tiled_forward(model.module, x, 64)
        naive = torch.zeros_like(whole)
        for y0 in (0, 64):
            for x0 in (0, 64):
                naive[..., y0 : y0 + 64, x0 : x0 + 64] = model(x[..., y0 : y0 + 64, x0 : x0 + 64])
    scale = 255.0
    assert (whole - exact).abs().max() / scale <= 1e-3
    assert (whole - naive).abs().max() / scale > 1e-2


def test_automatic_tiling_depends_on_the_device():
    from nunet.core.planes import tiling_plan

    assert tiling_plan(2000, 2000, None, "cpu") == (True, 256)
    assert tiling_plan(1200, 1200, None, "cpu") == (False, 256)
    assert tiling_plan(2000, 2000, None, "cpu", "bf16") == (False, 256)  # half the bytes, a faster whole pass
    assert tiling_plan(2100, 2100, None, "cpu", "bf16") == (True, 256)
    assert tiling_plan(2000, 2000, None, "cuda") == (False, 1024)
    assert tiling_plan(4096, 4096, None, "cuda:0") == (True, 1024)
    assert tiling_plan(100, 100, 64, "cpu") == (True, 64)
    assert tiling_plan(100, 100, 0, "cpu")[0] is False


def test_scratch_dir_avoids_a_ram_backed_tmp(tmp_path, monkeypatch):
    from nunet.core.tiling import fs_type, scratch_dir

    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n")
    assert fs_type("/tmp/x", str(mounts)) == "tmpfs" and fs_type("/var/tmp", str(mounts)) == "ext4"
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", "/tmp")
    assert scratch_dir(str(mounts)) == "/var/tmp"
    mounts.write_text("/dev/vda / ext4 rw 0 0\n")
    assert scratch_dir(str(mounts)) == "/tmp"
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert scratch_dir(str(mounts)) == str(tmp_path)


def test_tiled_forward_reports_every_tile_of_every_pass(model):
    from nunet.core.tiling import tiled_passes

    x = torch.from_numpy(pad_plane(normalise_plane(blobs((40, 40)))))[None, None]
    calls = []
    with torch.inference_mode():
        tiled_forward(model.module, x, 16, on_tile=calls.append)
    assert sum(calls) == pytest.approx(tiled_passes(model.module)) and tiled_passes(model.module) == 21
    assert len(calls) == 21 * 9  # 3 x 3 tiles of the 40-px plane at every resolution


def test_augment_with_tiles_equals_augment_on_the_whole_plane(model):
    img = blobs((70, 33), seed=6, n=10)
    whole = enhance_native(img, model, augment=True, tile_size=0)
    np.testing.assert_allclose(enhance_native(img, model, augment=True, tile_size=20), whole, atol=1e-5)
    assert whole.shape == (70, 33)


def test_tiles_smaller_than_the_minimum_are_refused_and_small_ones_warned(model):
    from nunet.errors import OptionWarning

    with pytest.raises(UsageError, match="at least 8 px, got 3"):
        enhance(blobs((64, 64)), model, tile_size=3)
    with pytest.warns(OptionWarning, match="tiles under 64 px make a large plane slow"):
        enhance(blobs((64, 64)), model, tile_size=16)
