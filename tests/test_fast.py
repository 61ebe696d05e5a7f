"""The fast architecture (``nunet-fast``): fewer multiply-adds, the same contract as NU-Net (grey in,
[0, 1] out, exact shape, frame, tiling equal to the whole plane, a plain twin for ONNX), and the
shipped family in the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import blobs, enhance_native
from nunet import list_models, load_model, save_model
from nunet.core.model import (
    ARCHITECTURES,
    NUNet,
    NUNetFast,
    NUNetFastMid,
    NUNetFastThin,
    multiply_adds,
    residual_blocks,
)


@pytest.mark.parametrize("fast", [NUNetFast, NUNetFastMid, NUNetFastThin])
def test_the_fast_networks_need_at_least_4x_fewer_multiply_adds(fast):
    assert multiply_adds(NUNet().eval()) >= 4 * multiply_adds(fast().eval())
    assert residual_blocks(fast()) == ["res1", "res2", "res3", "res4"]
    assert set(ARCHITECTURES) == {"nunet", "nunet-fast", "nunet-fast-48", "nunet-fast-thin"}


@pytest.fixture(scope="module", params=[NUNetFast, NUNetFastThin])
def fast_path(request, tmp_path_factory):
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("fast") / "fast-test.pt"
    save_model(request.param(), path, name="fast-test", w=None, frame_pad=8, frame_fill="mean")
    return path


def test_a_thin_student_starts_from_the_strongest_inner_channels_of_a_wider_network():
    from nunet.training.thin import fit_residual_blocks

    torch.manual_seed(3)
    wide, thin = NUNetFast().state_dict(), NUNetFastThin().state_dict()
    strong = torch.arange(0, 64, 2)  # the even channels: made the strongest in every block
    for block in residual_blocks(NUNetFast()):
        wide[f"{block}.in1.weight"][strong] += 10.0
    state = fit_residual_blocks(wide, thin)
    net = NUNetFastThin()
    net.load_state_dict(state, strict=True)
    for block in residual_blocks(net):
        assert torch.equal(state[f"{block}.conv1.conv.weight"], wide[f"{block}.conv1.conv.weight"][strong])
        assert torch.equal(state[f"{block}.conv2.conv.weight"], wide[f"{block}.conv2.conv.weight"][:, strong])
        assert torch.equal(state[f"{block}.conv2.conv.bias"], wide[f"{block}.conv2.conv.bias"])
    assert torch.equal(state["conv1.conv.weight"], wide["conv1.conv.weight"])
    assert fit_residual_blocks(wide, wide) == wide  # same widths: nothing cut


def test_a_wider_student_starts_computing_what_the_narrower_network_did():
    from nunet.training.thin import fit_residual_blocks

    torch.manual_seed(4)
    narrow, wider = NUNetFastThin().eval(), NUNetFastMid().eval()
    fresh = {key: value.clone() for key, value in wider.state_dict().items()}
    wider.load_state_dict(fit_residual_blocks(narrow.state_dict(), fresh), strict=True)
    x = torch.rand((1, 1, 40, 48))
    with torch.no_grad():
        torch.testing.assert_close(wider(x), narrow(x))
    state = wider.state_dict()
    for block in residual_blocks(wider):  # the new channels compute (their fresh weights) but are not read yet
        new = fresh[f"{block}.conv1.conv.weight"][32:]
        assert new.abs().sum() > 0 and torch.equal(state[f"{block}.conv1.conv.weight"][32:], new)
        assert not state[f"{block}.conv2.conv.weight"][:, 32:].any()


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
    assert all(e.metadata.get("architecture") == "NUNetFastThin" for e in fast)
    image = blobs((40, 44))
    half = enhance_native(image, "nunet-fast", w=0.875, device="cpu")
    a, b = enhance_native(image, "nunet-fast-w0.75", device="cpu"), enhance_native(image, "nunet-fast", device="cpu")
    np.testing.assert_allclose(half, 0.5 * a + 0.5 * b, atol=1e-5)
