"""Can int8 convolutions speed NU-Net up on a CPU within 1e-2 of fp32? Error per model and kernel times.

Usage: ``python benchmarks/bench_int8.py [-m MODEL ...]``

1. Error: the best int8 can do. The 3x3 convolutions of the encoder (strided) and of the residual
   blocks (three quarters of the multiply-adds) get int8 weights (per output channel) and uint8
   activations (per tensor, the exact min/max of each activation: no calibration error, no
   saturation), with exact accumulation; InstanceNorm, the 9x9 layers and the decoder stay fp32.
   This is the arithmetic of any int8 kernel with int32 accumulation, simulated in fp32 (the
   kernels below give the same values within float rounding). Max and mean abs difference from
   fp32 on [0, 1], per model, on a plane of each synthetic modality and the stardist package's
   real images (when installed).
2. Kernels, on one residual convolution of a 400x400 plane (128 channels, 100x100 + padding):
   fp32 convolution against oneDNN's int8 convolution with fp32 output
   (``onednn::qconv2d_pointwise``), the activation's quantisation and the weight packing it needs
   (per input scale, so per call unless the scales are calibrated ahead).
"""

from __future__ import annotations

import argparse
import statistics
import time


def fake_int8(layer, x):
    """A reflection-padded convolution with int8 weights and uint8 activations, accumulated exactly."""
    import torch

    padded = layer.pad(x)
    low, high = min(float(padded.min()), 0.0), max(float(padded.max()), 0.0)
    scale = max(high - low, 1e-8) / 255.0
    zero = round(-low / scale)
    q = (torch.clamp(torch.round(padded / scale) + zero, 0, 255) - zero) * scale
    weight = layer.conv.weight
    w_scale = (weight.abs().amax(dim=(1, 2, 3), keepdim=True) / 127.0).clamp_min(1e-12)
    w = torch.round(weight / w_scale).clamp(-127, 127) * w_scale
    return torch.nn.functional.conv2d(q, w, layer.conv.bias, layer.conv.stride)


def int8_net(state):
    """An eager NUNet whose encoder 3x3 and residual convolutions run :func:`fake_int8`."""
    import torch

    from nunet.core.model import ENCODER, RESIDUAL, RESIDUAL_BLOCKS, NUNet

    class FakeInt8(torch.nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return fake_int8(self.layer, x)

    net = NUNet()
    net.load_state_dict(state)
    paths = [s.path.rsplit(".", 1)[0] for s in ENCODER[1:]]
    paths += [f"{b}.{s.path.rsplit('.', 1)[0]}" for b in RESIDUAL_BLOCKS for s in RESIDUAL]
    for path in paths:
        parent, _, name = path.rpartition(".")
        owner = net.get_submodule(parent) if parent else net
        setattr(owner, name, FakeInt8(getattr(owner, name)))
    return net.eval()


def planes():
    import numpy as np

    from nunet.core.preprocess import normalise_plane
    from nunet.data.synth import MODALITIES, synth_image

    found = {m: normalise_plane(synth_image(m, (256, 256), seed=7).image) for m in MODALITIES}
    try:
        from nunet.data.real import load_real_images

        real = load_real_images()
        found["real 2D"] = normalise_plane(real.image2d.astype(np.float32))
        found["real 3D z=15"] = normalise_plane(real.stack[15].astype(np.float32))
    except Exception as exc:  # the stardist data are optional here
        print(f"(real images skipped: {exc})")
    return found


def timed(f, repeats: int = 10) -> float:
    f()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", action="append", help="model name or file (default: the default and w8)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from nunet import load_model
    from nunet.core.runtime import cpu_info
    from nunet.options import DEFAULT_MODEL

    print(f"CPU: {cpu_info().describe()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    images = planes()
    print("1. best-case int8 error against fp32, on [0, 1] (max / mean abs)")
    for name in args.model or [DEFAULT_MODEL]:
        loaded = load_model(name, "cpu")
        net = int8_net(loaded.module.state_dict())
        cells = []
        with torch.inference_mode():
            for label, plane in images.items():
                h, w = plane.shape[0] // 4 * 4, plane.shape[1] // 4 * 4
                x = torch.from_numpy(np.ascontiguousarray(plane[:h, :w]))[None, None].float()
                diff = (loaded.module(x).clamp(0, 255) - net(x).clamp(0, 255)).abs() / 255.0
                cells.append(f"{label} {float(diff.max()):.3f}/{float(diff.mean()):.4f}")
        print(f"  {loaded.name}: " + ", ".join(cells))

    if not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
        print("2. this torch build has no oneDNN int8 convolution")
        return
    print("2. one residual convolution of a 400x400 plane (ms, median of 10)")
    layer = load_model(DEFAULT_MODEL, "cpu").module.res3.conv1
    weight, bias = layer.conv.weight.detach(), layer.conv.bias.detach()
    x = torch.relu(torch.randn(1, 128, 100, 100))
    with torch.inference_mode():
        padded = torch.nn.functional.pad(x, [1, 1, 1, 1], mode="reflect").contiguous()
        scale, zero = float(padded.max()) / 255.0, 0
        w_scale = (weight.abs().amax(dim=(1, 2, 3)) / 127.0).clamp_min(1e-12)
        w_int8 = torch.round(weight / w_scale[:, None, None, None]).clamp(-127, 127).to(torch.int8)
        q = torch.quantize_per_tensor(padded, scale, zero, torch.quint8).int_repr()

        def pack():
            return torch.ops.onednn.qconv_prepack(
                w_int8, w_scale, scale, zero, [1, 1], [0, 0], [1, 1], 1, list(q.shape)
            )

        packed, w_zero = pack(), torch.zeros(128, dtype=torch.int64)

        def qconv():
            return torch.ops.onednn.qconv2d_pointwise(
                q, scale, zero, packed, w_scale, w_zero, bias, [1, 1], [0, 0], [1, 1], 1,
                1.0, 0, torch.float32, "none", [], "",
            )  # fmt: skip

        fp32 = timed(lambda: torch.nn.functional.conv2d(padded, weight, bias))
        rows = {
            "fp32 convolution": fp32,
            "int8 convolution (fp32 out)": timed(qconv),
            "quantise the activation": timed(
                lambda: torch.quantize_per_tensor(padded, scale, 0, torch.quint8).int_repr()
            ),
            "its min/max (uncalibrated)": timed(lambda: torch.aminmax(padded)),
            "pack the weights (per input scale)": timed(pack),
        }
    for label, ms in rows.items():
        print(f"  {label:<36}{ms:>8.2f}{fp32 / ms:>8.2f}x")
    calibrated = rows["int8 convolution (fp32 out)"] + rows["quantise the activation"]
    print(f"  int8 with calibrated scales: {calibrated:.2f} ms = {fp32 / calibrated:.2f}x fp32 on this convolution")


if __name__ == "__main__":
    main()
