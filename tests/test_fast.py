"""The fast architecture (``nunet-fast``): fewer multiply-adds, the same contract as NU-Net (grey in,
[0, 1] out, exact shape, frame, tiling equal to the whole plane, a plain twin for ONNX), and the
shipped family in the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import blobs, enhance_native
from nunet import list_models, load_model, save_model
from nunet.core.model import ARCHITECTURES, NUNet, NUNetFast, multiply_adds, residual_blocks


def test_the_fast_network_needs_at_least_4x_fewermultiply_adds():
    assert multiply_adds(NUNet().eval()) >= 4 * multiply_adds(NUNetFast().eval())
    assert residual_blocks(NUNetFast()) == ["res1", "res2", "res3", "res4"]
    assert set(ARCHITECTURES) == {"nunet", "nunet-fast"}


@pytest.fixture(scope="module")
def fast_path(tmp_path_factory):
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("fast") / "fast-test.pt"
    save_model(NUNetFast(), path, name="fast-test", w=None, frame_pad=8, frame_fill="mean")
    return path


def test_a_fast_model_keeps_the_filter_contract(fast_path):
    image = blobs((2, 45, 61))
    out = enhance_native(image, fast_path, axes="ZYX", device="cpu")
    assert out.shape == image.shape and out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    tiled = enhance_native(image, fast_path, axes="ZYX", device="cpu", tile_size=24)
    np.testing.assert_allclose(tiled, out, atol=1e-5)  # seam-free tiling, four residual blocks
    assert load_model(fast_path).frame.pad == 8


def test_the_plain_twin_of_a_fast_model_equals_it(fast_path):
    from nunet.core.plain import plain_twin

    module = load_model(fast_path).module
    x = torch.rand((1, 1, 48, 64)) * 255
    with torch.no_grad():
        np.testing.assert_allclose(plain_twin(module)(x).numpy(), module(x).numpy(), atol=1e-3)


def test_the_shipped_fast_family_is_registered_and_blends():
    entries = {e.name: e for e in list_models()}
    fast = [e for e in entries.values() if e.family == "nunet-fast"]
    assert {e.name for e in fast} == {"nunet-fast", "nunet-fast-w0.75", "nunet-fast-w0.5"}
    assert all(e.metadata.get("architecture") == "NUNetFast" for e in fast)
    image = blobs((40, 44))
    half = enhance_native(image, "nunet-fast", w=0.875, device="cpu")
    a, b = enhance_native(image, "nunet-fast-w0.75", device="cpu"), enhance_native(image, "nunet-fast", device="cpu")
    np.testing.assert_allclose(half, 0.5 * a + 0.5 * b, atol=1e-5)
