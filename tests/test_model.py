"""The network itself and its TorchScript model files."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from nunet import NUNet, load_model, save_model
from nunet.core.model import count_parameters
from nunet.core.modelfile import read_metadata
from nunet.errors import ModelError


def test_parameter_count_matches_published_net():
    assert count_parameters(NUNet()) == 1_668_865


def test_layers_follow_the_published_architecture():
    net = NUNet()
    convs = [
        (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0])
        for m in net.modules()
        if isinstance(m, nn.Conv2d)
    ]
    assert convs[:3] == [(1, 32, 9, 1), (32, 64, 3, 2), (64, 128, 3, 2)]
    assert convs[3:13] == [(128, 128, 3, 1)] * 10
    assert convs[13:] == [(128, 64, 3, 1), (64, 32, 3, 1), (32, 1, 9, 1)]
    pads = [m.padding[0] for m in net.modules() if isinstance(m, nn.ReflectionPad2d)]
    assert pads == [k // 2 for _, _, k, _ in convs]
    norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 15 and all(n.affine for n in norms)


def test_residual_sum_has_no_activation():
    block = NUNet().res1.eval()
    x = torch.randn(1, 128, 8, 8)
    expected = x + block.in2(block.conv2(torch.relu(block.in1(block.conv1(x)))))
    y = block(x)
    assert torch.allclose(y, expected)
    assert (y < 0).any()


def test_output_keeps_shape():
    y = NUNet().eval()(torch.rand(2, 1, 36, 44) * 255)
    assert y.shape == (2, 1, 36, 44)


def test_save_and_load_round_trip(tmp_path):
    net = NUNet().eval()
    path = save_model(
        net, tmp_path / "m.pt", name="round-trip", w=6.5, training={"steps": 12, "lr": 1e-4}, description="a test"
    )
    loaded = load_model(path)
    assert loaded.name == "round-trip" and loaded.w == 6.5
    meta = loaded.metadata
    assert meta["training"] == {"steps": 12, "lr": 1e-4}
    assert meta["parameters"] == 1_668_865
    assert meta["normalisation"]["output_range"] == [0.0, 1.0]
    assert meta["nunet_version"]
    x = torch.rand(1, 1, 32, 40) * 255
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    assert not list(tmp_path.glob("*.part"))


def test_metadata_is_readable_without_torch(model_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from nunet.core.modelfile import read_metadata\n"
        f"print(read_metadata({str(model_path)!r})['name'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "nunet-test"
    with zipfile.ZipFile(model_path) as archive:
        entry = next(n for n in archive.namelist() if n.endswith("extra/nunet.json"))
        assert json.loads(archive.read(entry))["w"] == 8.0


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(NUNet().state_dict(), path)
    with pytest.raises(ModelError, match="checkpoint.pt"):
        load_model(path)


def test_non_model_file_is_refused(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="junk.pt: not a nunet TorchScript model"):
        read_metadata(path)


def test_scripted_model_equals_eager(model, model_path):
    from nunet.core.model import untrained

    net = untrained(seed=1)
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (1, 1, 48, 64)).astype(np.float32))
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 5, 6, 7), (2, 3, 1, 2), (1, 4, 9, 4)])
def test_upsample_conv_on_the_low_res_grid_equals_upsampling_first(shape):
    """The decoder's sub-pixel form equals nearest x2 + reflection pad 1 + 3x3 conv, borders included."""
    from nunet.core.model import upsample_conv3x3

    torch.manual_seed(0)
    x, weight, bias = torch.randn(shape), torch.randn(6, shape[1], 3, 3), torch.randn(6)
    up = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    reference = nn.functional.conv2d(nn.functional.pad(up, [1, 1, 1, 1], mode="reflect"), weight, bias)
    padded = nn.functional.pad(x, [1, 1, 1, 1], mode="replicate")
    torch.testing.assert_close(upsample_conv3x3(padded, weight, bias), reference, atol=1e-5, rtol=1e-5)
    unbiased = reference - bias[:, None, None]
    torch.testing.assert_close(upsample_conv3x3(padded, weight, None), unbiased, atol=1e-5, rtol=1e-5)


def test_single_output_conv_equals_conv2d():
    from nunet.core.model import single_output_conv

    torch.manual_seed(1)
    x, weight, bias = torch.randn(2, 32, 21, 17), torch.randn(1, 32, 9, 9), torch.randn(1)
    torch.testing.assert_close(
        single_output_conv(x, weight, bias), nn.functional.conv2d(x, weight, bias), atol=1e-4, rtol=1e-5
    )
    torch.testing.assert_close(
        single_output_conv(x, weight, None), nn.functional.conv2d(x, weight), atol=1e-4, rtol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_instance_norm_of_low_precision_input_matches_fp32(dtype):
    """For bf16/fp16 inputs the output, in the input's dtype, is instance_norm of the fp32 copy rounded:
    statistics in fp32 (a low-precision mean of +-200 would be off by a whole standard deviation)."""
    from nunet.core.model import InstanceNorm

    torch.manual_seed(2)
    norm = InstanceNorm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    x = (torch.randn(2, 8, 30, 20) * 3 + torch.linspace(-200, 200, 8).view(1, 8, 1, 1)).to(dtype)
    reference = nn.functional.instance_norm(x.float(), weight=norm.weight, bias=norm.bias, eps=norm.eps)
    out = norm(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, reference.to(dtype), atol=2e-2, rtol=0)


def test_saved_archive_is_named_after_the_model_file(tmp_path):
    import zipfile

    from nunet import save_model
    from nunet.core.model import NUNet

    path = save_model(NUNet(), tmp_path / "nunet-wx.pt", name="nunet-wx", w=1.0)
    assert {name.split("/")[0] for name in zipfile.ZipFile(path).namelist()} == {"nunet-wx"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nunet-wx.pt"]  # no temporary left


def test_the_layer_sequence_matches_the_network():
    """The specs tiling walks (model.ENCODER ... OUTPUT) name NU-Net's real convolutions and norms."""
    from functools import reduce

    from nunet.core.model import DECODER, ENCODER, OUTPUT, RESIDUAL, RESIDUAL_BLOCKS, NUNet

    net = NUNet()

    def module(path: str) -> torch.nn.Module:
        return reduce(getattr, path.split("."), net)

    in_blocks = [(f"{b}.{s.path}", s, f"{b}.{s.norm}") for b in RESIDUAL_BLOCKS for s in RESIDUAL]
    specs = [(s.path, s, s.norm) for s in (*ENCODER, *DECODER, OUTPUT)] + in_blocks
    for path, spec, norm in specs:
        conv = module(path)
        assert isinstance(conv, torch.nn.Conv2d)
        assert conv.kernel_size == (spec.kernel, spec.kernel) and conv.stride == (spec.stride, spec.stride)
        if spec.norm:
            assert isinstance(module(norm), torch.nn.InstanceNorm2d)
    assert len(specs) == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())  # every convolution
