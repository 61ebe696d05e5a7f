"""Native bf16 on the CPU (:class:`nunet.core.bf16.Bf16Net`): the same function as the model file's
module within ``auto``'s tolerance, for both architectures, with an exact rearrangement of the
upsampling convolution, and a fallback for networks of another shape. On a CPU without native
bf16 oneDNN emulates it: slower, the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import blobs
from nunet import load_model
from nunet.core.bf16 import Bf16Net, phase_kernels
from nunet.core.model import upsample_conv3x3
from nunet.core.preprocess import normalise_plane, pad_plane, to_unit_range


@pytest.mark.parametrize("shape", [(1, 5, 6, 7), (2, 3, 4, 9)])
def test_one_convolution_with_a_channel_per_phase_equals_the_upsampling_convolution(shape):
    x, weight, bias = torch.rand(shape, dtype=torch.float64), torch.rand(4, shape[1], 3, 3, dtype=torch.float64), None
    padded = torch.nn.functional.pad(x, [1, 1, 1, 1], mode="replicate")
    n, _, h, w = x.shape
    phases = torch.nn.functional.conv2d(padded, phase_kernels(weight), bias)  # (n, 4 x 4, h, w)
    interleaved = phases.view(n, 2, 2, 4, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, 4, 2 * h, 2 * w)
    np.testing.assert_allclose(interleaved, upsample_conv3x3(padded, weight, bias), atol=1e-12)


@pytest.mark.parametrize("name", ["nunet-v10", "nunet-fast", "nunet-test"])
def test_native_bf16_is_the_model_as_close_as_autocast(name):
    """Both shipped architectures and the random test model: native bf16 is no further from fp32
    than twice autocast bf16's own distance (the two round at different places; either's largest
    pixel error varies from plane to plane, 0.004-0.02 on [0, 1])."""
    loaded = load_model(name)
    x = torch.from_numpy(pad_plane(normalise_plane(blobs((70, 90), seed=3))))[None, None]
    with torch.inference_mode():
        reference = to_unit_range(loaded.module(x))
        native = Bf16Net(loaded.module)(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = to_unit_range(loaded.module(x))
        assert native.shape == reference.shape and native.dtype == torch.float32 and native.is_contiguous()
        error = float((to_unit_range(native) - reference).abs().max())
        assert 0 < error <= 2 * float((autocast - reference).abs().max())


def test_loaded_models_build_the_bf16_network_once_and_only_for_bf16_on_a_cpu(model):
    assert model.network("fp32") is model.module
    assert isinstance(model.network("bf16"), Bf16Net) and model.network("bf16") is model.network("bf16")


def test_a_network_of_another_shape_keeps_its_module_under_autocast(tmp_path):
    from nunet import save_model
    from nunet.core.model import untrained

    net = untrained(0)
    net.extra = torch.nn.Conv2d(1, 1, 1)  # a parameter NU-Net's layer sequence does not have
    with pytest.raises(ValueError, match="layer sequence"):
        Bf16Net(net)
    path = save_model(net, tmp_path / "other.pt", name="other", w=None)
    loaded = load_model(path)
    assert loaded.network("bf16") is loaded.module
