"""NU-Net inference on a CUDA GPU: ms/plane per precision and batch, and the memory of a volume.

Prints, in one run on one GPU:
- ms/plane at 400x400 for fp32 (TF32 off, then on), bf16 and fp16 autocast, over plane batch
  sizes, with the ratio to fp32 at batch 1 and the max abs difference from fp32 on the [0, 1]
  output of a synthetic nuclei image;
- the same net replayed as a CUDA graph at the best batch size;
- the output layer (32->1 9x9 conv) as cuDNN runs it and as nunet computes it (row convolutions);
- ``enhance`` on a 130x400x400 volume (the paper's example: 1.3 GB, 23 ms/plane): wall ms/plane
  including normalisation and transfers, and the peak GPU memory allocated; then with
  ``precision="auto"`` (what it picks: precision and batch size, and how long measuring took).

Usage: ``python benchmarks/bench_gpu.py [--model PATH|NAME] [--repeats 20]`` (default model: a
seeded untrained NU-Net, which costs the same as a trained one).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np


def cuda_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` on the GPU (CUDA events), after three warm-ups."""
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or path (default: seeded untrained)")
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import torch

    from nunet import enhance, load_model
    from nunet.core.model import untrained
    from nunet.core.preprocess import normalise_plane
    from nunet.data.synth import synth_image

    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    net = load_model(args.model, device="cuda").module if args.model else untrained(0).cuda().eval()
    plane = normalise_plane(synth_image("dense", (args.size, args.size), seed=2).image)
    x1 = torch.from_numpy(plane)[None, None].cuda()

    def run(x: torch.Tensor, precision: str) -> torch.Tensor:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        ctx = torch.autocast("cuda", dtype=dtype, cache_enabled=False) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return net(x).float().clamp(0, 255) / 255

    reference = run(x1, "fp32")
    print(f"\n{'precision':<10}{'batch':>6}{'ms/plane':>10}{'vs fp32 b1':>11}{'max |diff|':>11}")
    base, best = None, (float("inf"), "", 0)
    for precision in ("fp32", "tf32", "bf16", "fp16"):
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        mode = "fp32" if precision == "tf32" else precision
        diff = float((run(x1, mode) - reference).abs().max())
        for batch in (1, 8, 32):
            x = x1.expand(batch, -1, -1, -1).contiguous()
            ms = cuda_ms(lambda: run(x, mode), args.repeats) / batch
            base = base or ms
            best = min(best, (ms, precision, batch))
            print(f"{precision:<10}{batch:>6}{ms:>10.3f}{base / ms:>10.1f}x{diff:>11.4f}")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = best[1] == "tf32"

    ms, precision, batch = best
    mode = "fp32" if precision == "tf32" else precision
    print(f"\nbest eager: {precision} batch {batch}: {ms:.3f} ms/plane (target < 2 ms/plane)")
    static = x1.expand(batch, -1, -1, -1).contiguous()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            run(static, mode)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(static, mode)
    print(f"CUDA graph replay of the same: {cuda_ms(graph.replay, args.repeats) / batch:.3f} ms/plane")
    output_layer(args.size, batch, mode, args.repeats)

    model_ref = args.model or _saved_untrained()
    volume = np.stack([synth_image("sparse", (args.size, args.size), seed=100 + z).image for z in range(130)])
    for precision in ("fp32", "fp16"):
        for batch_size in (1, 16):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            # warm-up on the whole volume: cuDNN picks kernels for each new batch shape once
            enhance(volume, model_ref, device="cuda", precision=precision, batch_size=batch_size, axes="ZYX")
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            enhance(volume, model_ref, device="cuda", precision=precision, batch_size=batch_size, axes="ZYX")
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / len(volume) * 1e3
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(
                f"enhance 130x{args.size}x{args.size} {precision} batch {batch_size}: {wall:.2f} ms/plane "
                f"(wall, incl. normalisation and transfers), peak GPU memory {peak:.2f} GiB (paper: 1.3 GB)"
            )

    from nunet import load_model
    from nunet.core.autotune import Tuner

    loaded = load_model(model_ref, "cuda")
    start = time.perf_counter()
    tuner = Tuner()
    chosen = tuner.precision(loaded, "cuda")
    batch = tuner.batch_size(loaded, "cuda", chosen)
    tuning = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    enhance(volume, model_ref, device="cuda", precision="auto", axes="ZYX")
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / len(volume) * 1e3
    print(
        f"enhance 130x{args.size}x{args.size} auto (picks {chosen}, batch {batch}; measuring took {tuning:.1f} s): "
        f"{wall:.2f} ms/plane, peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    )


def output_layer(size: int, batch: int, precision: str, repeats: int) -> None:
    """The 32->1 9x9 output conv as cuDNN runs it against nunet's row convolutions (used on all devices)."""
    import torch

    from nunet.core.model import single_output_conv

    padded = torch.rand(batch, 32, size + 8, size + 8, device="cuda")
    weight, bias = torch.randn(1, 32, 9, 9, device="cuda") * 0.05, torch.zeros(1, device="cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    ctx = torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        direct = cuda_ms(lambda: torch.nn.functional.conv2d(padded, weight, bias), repeats) / batch
        rows = cuda_ms(lambda: single_output_conv(padded, weight, bias), repeats) / batch
    print(
        f"output layer 32->1 9x9, {precision} batch {batch}: cuDNN conv2d {direct:.3f} ms/plane, "
        f"nunet row convolutions {rows:.3f} ms/plane"
    )


def _saved_untrained() -> str:
    """Path of a seeded untrained model saved once to a temporary file."""
    import os
    import tempfile

    from nunet import save_model
    from nunet.core.model import untrained

    path = os.path.join(tempfile.gettempdir(), "nunet-bench-untrained.pt")
    if not os.path.exists(path):
        save_model(untrained(0), path, name="bench", w=None)
    return path


if __name__ == "__main__":
    main()
