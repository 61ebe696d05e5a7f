"""Inference speed and memory of NU-Net on this machine, against baselines measured in the same run.

Prints:
- the machine's fp32 matmul GFLOP/s (the ceiling) and NU-Net's GFLOP per plane;
- ms/plane at 400x400 for eager and TorchScript modules, over batch sizes and thread counts,
  with the achieved GFLOP/s and its ratio to the ceiling (target >= 0.5);
- ms/plane per precision (fp32, bf16 autocast, and what ``auto`` picks) with the ratio to fp32;
- a folder batch (``run_batch`` on TIFFs) against the sum of the network's compute time on the
  same images (target: wall within 10% of compute, i.e. I/O hidden by the reader/writer threads);
- a 2048x2048 plane whole and tiled, and the peak resident memory of a tiled 8192x8192 plane;
- a scipy Difference-of-Gaussians ms/plane for scale.

Usage: ``python benchmarks/bench_inference.py [--size 400] [--tiled-size 8192] [--repeats 5]
[--files 8]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np

from nunet.options import DEFAULT_MODEL


def best_ms(fn, repeats: int) -> float:
    """Best wall time of ``fn()`` in milliseconds over ``repeats`` runs (after one warm-up)."""
    return min(interleaved_ms({None: fn}, repeats)[None])


def interleaved_ms(calls: dict, repeats: int) -> dict:
    """Wall times in ms of every call in ``calls`` (by key), run in ``repeats`` rounds of one call
    each after one warm-up each, so that all of them see the same spells of a shared machine."""
    for call in calls.values():
        call()
    times: dict = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key].append(1e3 * (time.perf_counter() - start))
    return times


def matmul_gflops(repeats: int, dtype: str = "float32") -> float:
    """GFLOP/s of a 2048x2048 matrix product in ``dtype`` (float32 or bfloat16)."""
    import torch

    a, b = (torch.randn(2048, 2048).to(getattr(torch, dtype)) for _ in range(2))
    ms = best_ms(lambda: torch.mm(a, b), repeats)
    return 2 * 2048**3 / (ms * 1e-3) / 1e9


def nunet_gflop(height: int, width: int) -> float:
    """Nominal cost of the published network: multiply-adds x 2 of each convolution at its output size.

    nunet computes the decoder with fewer operations (upsampling convolutions on the low-res
    grid, :func:`nunet.core.model.upsample_conv3x3`), so GFLOP/s derived from this are effective rates.
    """
    layers = (
        [(1, 32, 9, 1), (32, 64, 3, 2), (64, 128, 3, 4)]
        + [(128, 128, 3, 4)] * 10
        + [(128, 64, 3, 2), (64, 32, 3, 1), (32, 1, 9, 1)]
    )
    return sum(2 * cin * cout * k * k * (height // s) * (width // s) for cin, cout, k, s in layers) / 1e9


def tiling_cost(size: int, plane_ms: float) -> None:
    """One large plane whole and with the default tiling, against the 400x400 per-pixel rate."""
    from nunet import enhance
    from nunet.core.planes import AUTO_TILING
    from nunet.data.synth import synth_image

    tile = AUTO_TILING["cpu"][1]
    plane = synth_image("sparse", (size, size), seed=2).image
    whole = best_ms(lambda: enhance(plane, DEFAULT_MODEL, device="cpu", tile_size=0), 1) / 1e3
    tiled = best_ms(lambda: enhance(plane, DEFAULT_MODEL, device="cpu", tile_size=tile), 1) / 1e3
    ideal = plane_ms / 1e3 * size * size / 400**2
    print(
        f"\n{size}x{size} plane, {DEFAULT_MODEL} fp32: whole {whole:.1f} s, tiled ({tile}-px tiles) {tiled:.1f} s; "
        f"400x400 rate scaled up: {ideal:.1f} s (tiled / scaled = {tiled / ideal:.2f})"
    )


def tiled_peak_memory(size: int, tile: int) -> dict:
    """Run a tiled plane in a fresh process; return its peak RSS (MB, ``VmHWM``) and seconds.

    ``VmHWM`` starts afresh in the new process (``ru_maxrss`` would inherit the parent's).
    """
    code = f"""
import json, time, numpy as np
from nunet import enhance
from nunet.core.model import untrained
from nunet import save_model
import tempfile, os
path = os.path.join(tempfile.mkdtemp(), "m.pt")
save_model(untrained(0), path, name="bench", w=None)
plane = np.random.default_rng(0).random(({size}, {size}), dtype=np.float32)
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = hwm()
start = time.perf_counter()
enhance(plane, path, tile_size={tile}, device="cpu")
print(json.dumps({{"seconds": time.perf_counter() - start,
                  "peak_mb": hwm(), "before_mb": base}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def precision_rows(size: int, repeats: int, ceilings: dict[str, float]) -> float:
    """ms/plane of the full ``enhance`` path per precision, the ratio to fp32 and the fraction of
    that precision's matmul ceiling (GFLOP/s in ``ceilings``) reached; returns fp32's ms."""
    from nunet import enhance, load_model
    from nunet.core.autotune import Tuner
    from nunet.core.runtime import cpu_info
    from nunet.data.synth import synth_image

    plane = synth_image("dense", (size, size), seed=3).image
    loaded = load_model(DEFAULT_MODEL, device="cpu")
    tuner = Tuner()
    chosen = tuner.precision(loaded, "cpu")
    batch = tuner.batch_size(loaded, "cpu", chosen)
    threads = tuner.thread_count(loaded, chosen, batch)
    print(
        f"\nenhance() on one {size}x{size} plane, {DEFAULT_MODEL}, CPU "
        f"(auto picks {chosen}, batch {batch}, {threads} threads):"
    )
    gflop = nunet_gflop(size, size)
    kind = cpu_info().kind
    target = {"AMX": "auto >= 2.5x fp32", "AVX512-BF16": "auto >= 1.6x fp32"}.get(kind, "auto keeps fp32")
    base = None
    for precision in ("fp32", "bf16", "auto"):
        ms = best_ms(lambda: enhance(plane, DEFAULT_MODEL, device="cpu", precision=precision, radius="off"), repeats)
        base = base or ms
        ran = chosen if precision == "auto" else precision
        fraction = gflop / (ms * 1e-3) / ceilings[ran]
        print(
            f"  {precision:<5} {ms:8.1f} ms/plane  {base / ms:5.2f}x fp32  {fraction:.2f} of the {ran} ceiling"
            f"  (target on {kind}: {target})"
        )
    return base


def batch_overhead(files: int, size: int) -> None:
    """Wall time of a folder batch against the sum of the network's compute on the same images (best of 3)."""
    import tempfile
    from pathlib import Path

    import tifffile

    from nunet import filter_image
    from nunet.batch.run import run_batch
    from nunet.data.synth import synth_image
    from nunet.io import read_image
    from nunet.options import FilterSettings

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i in range(files):
            stack = np.stack([synth_image("sparse", (size, size), seed=50 + 2 * i + z).image for z in range(2)])
            tifffile.imwrite(src / f"img{i:02d}.tif", stack.astype(np.uint16), imagej=True, metadata={"axes": "ZYX"})
        images = [read_image(p) for p in sorted(src.glob("*.tif"))]
        filter_image(images[0], DEFAULT_MODEL, device="cpu")  # warm-up
        computes, walls = [], []
        for round_ in range(3):  # alternate, keep the best of each: this machine is noisy
            start = time.perf_counter()
            for image in images:
                filter_image(image, DEFAULT_MODEL, device="cpu")
            computes.append(time.perf_counter() - start)
            start = time.perf_counter()
            settings = FilterSettings(model=DEFAULT_MODEL, device="cpu")
            records = run_batch(src, Path(tmp) / f"out{round_}", settings).records
            walls.append(time.perf_counter() - start)
        compute, wall = min(computes), min(walls)
    assert all(r.status == "ok" for r in records)
    print(
        f"\nfolder batch, {files} TIFFs of 2x{size}x{size}: wall {wall:.2f} s, network compute alone "
        f"{compute:.2f} s: wall / compute = {wall / compute:.3f} (target <= 1.10)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=400, help="plane side for the speed figures")
    parser.add_argument(
        "--tiled-size",
        type=int,
        default=8192,
        help="plane side for the tiled memory figure (0 skips it; 8192 takes about 6 minutes on 2 cores)",
    )
    parser.add_argument("--tile", type=int, default=256, help="tile side for the tiled figures")
    parser.add_argument("--large-size", type=int, default=2048, help="plane side for whole vs tiled (0 skips)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--files", type=int, default=8, help="TIFFs in the folder-batch figure")
    args = parser.parse_args()

    import scipy.ndimage as ndi
    import torch

    from nunet.core.model import untrained

    threads_max = torch.get_num_threads()
    ceilings = {"fp32": matmul_gflops(args.repeats), "bf16": matmul_gflops(args.repeats, "bfloat16")}
    ceiling = ceilings["fp32"]
    gflop = nunet_gflop(args.size, args.size)
    from nunet.core.runtime import cpu_info

    print(f"torch {torch.__version__}, {threads_max} threads, CPU: {cpu_info().describe()}")
    print(
        f"matmul ceiling: fp32 {ceiling:.1f} GFLOP/s, bf16 {ceilings['bf16']:.1f} GFLOP/s; "
        f"NU-Net: {gflop:.2f} GFLOP per {args.size}x{args.size} plane"
    )

    eager = untrained(0).eval()
    with torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.script(untrained(0).eval()))
    print(f"\n{'module':<12}{'threads':>8}{'batch':>7}{'ms/plane':>10}{'GFLOP/s':>9}{'ratio':>7}")
    rows = []
    for name, module in (("eager", eager), ("torchscript", scripted)):
        for threads in sorted({1, threads_max}):
            torch.set_num_threads(threads)
            for batch in (1, 2, 4):
                x = torch.rand(batch, 1, args.size, args.size) * 255
                with torch.inference_mode():
                    ms = best_ms(lambda: module(x), args.repeats) / batch
                rate = gflop / (ms * 1e-3)
                rows.append((name, threads, batch, ms))
                print(f"{name:<12}{threads:>8}{batch:>7}{ms:>10.1f}{rate:>9.1f}{rate / ceiling:>7.2f}")
    torch.set_num_threads(threads_max)
    best = min(rows, key=lambda r: r[3])
    print(
        f"\nbest: {best[0]}, {best[1]} threads, batch {best[2]}: {best[3]:.1f} ms/plane, "
        f"{gflop / (best[3] * 1e-3) / ceiling:.2f} of the matmul ceiling (target >= 0.5)"
    )

    plane = np.random.default_rng(0).random((args.size, args.size), dtype=np.float32)
    dog_ms = best_ms(lambda: ndi.gaussian_filter(plane, 2.0) - ndi.gaussian_filter(plane, 3.2), args.repeats)
    print(f"scipy DoG (sigma 2, 3.2): {dog_ms:.2f} ms/plane; NU-Net / DoG = {best[3] / dog_ms:.0f}x")

    fp32_ms = precision_rows(args.size, args.repeats, ceilings)
    batch_overhead(args.files, args.size)
    if args.large_size:
        tiling_cost(args.large_size, fp32_ms * 400**2 / args.size**2)

    if args.tiled_size:
        mem = tiled_peak_memory(args.tiled_size, args.tile)
        ideal = fp32_ms / 1e3 * args.tiled_size**2 / args.size**2
        print(
            f"tiled {args.tiled_size}x{args.tiled_size} plane, tile {args.tile}: peak RSS {mem['peak_mb']:.0f} MB "
            f"(process before: {mem['before_mb']:.0f} MB; target < 2 GB), {mem['seconds']:.1f} s "
            f"({mem['seconds'] / ideal:.2f}x the {args.size}x{args.size} rate scaled up)"
        )


if __name__ == "__main__":
    main()
