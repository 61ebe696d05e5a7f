"""Speed of each model family per precision on this CPU, against the default at fp32 and a scipy DoG,
all measured in one run, the families' passes interleaved round by round.

Prints the CPU's capability (AVX2 / AVX-512 / AVX512-BF16 / AMX), the fp32 and bf16 matmul ceilings
(GFLOP/s of a 2048x2048 product), and for each family's w=1 model: multiply-adds per 400x400 plane,
ms/plane for fp32, bf16 (where the CPU runs it natively) and ``auto``, the ratio to the default model
at fp32 and to a scipy DoG, and the fraction of the matmul ceiling each precision reaches.
``--isa`` holds ATen and oneDNN to a lower level, for the figures of other CPU kinds on one machine:
``avx2`` (an AVX2-only CPU, bf16 emulated), ``avx512`` (AVX-512 without bf16), ``avx512-bf16``
(AVX512-BF16 without AMX); the script runs itself again in that environment.

Usage: ``python benchmarks/bench_families.py [--size 400] [--repeats 5] [--isa native|avx2|avx512|avx512-bf16]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
from bench_inference import best_ms, interleaved_ms, matmul_gflops  # this folder: run as a script from the root

from nunet.options import DEFAULT_MODEL

FAMILIES = (DEFAULT_MODEL, "nunet-fast")
ISA_ENV = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx512-bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--isa", choices=tuple(ISA_ENV), default="native")
    args = parser.parse_args()
    if any(os.environ.get(k) != v for k, v in ISA_ENV[args.isa].items()):
        env = {**os.environ, **ISA_ENV[args.isa]}
        raise SystemExit(subprocess.call([sys.executable, *sys.argv], env=env))

    import torch
    from scipy import ndimage

    from nunet import enhance, load_model
    from nunet.core.model import multiply_adds
    from nunet.core.plain import plain_twin
    from nunet.core.runtime import cpu_info
    from nunet.data.synth import synth_image

    info = cpu_info()
    print(
        f"CPU: {info.kind} (torch: {info.capability}), native bf16: {info.native_bf16}, "
        f"threads {torch.get_num_threads()}, ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '-')}"
    )
    fp32 = matmul_gflops(args.repeats, "float32")
    if info.native_bf16:
        bf16 = matmul_gflops(args.repeats, "bfloat16")
        print(f"matmul ceilings: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s ({bf16 / fp32:.3f}x)")
    else:  # emulated bf16 products can take minutes (held to AVX2 on an AMX Xeon: over 10 min)
        print(f"matmul ceilings: fp32 {fp32:.1f} GFLOP/s, bf16 not native (not measured)")
    plane = synth_image("dense", (args.size, args.size), seed=0).image.astype(np.float32)
    dog = best_ms(lambda: ndimage.gaussian_filter(plane, 2) - ndimage.gaussian_filter(plane, 3.2), args.repeats)
    print(f"scipy DoG: {dog:.1f} ms/plane ({args.size}x{args.size})")
    precisions = ["fp32", *(["bf16"] if info.native_bf16 else []), "auto"]
    reference = None
    print(
        f"\n| family | GMAC/plane | {' | '.join(f'{p} ms' for p in precisions)} | fp32 vs default | vs DoG "
        "| fraction of the fp32 / bf16 ceiling |"
    )
    print("|---|---|" + "---|" * len(precisions) + "---|---|---|")
    calls = {
        (family, precision): (
            lambda family=family, precision=precision: enhance(
                plane, family, device="cpu", precision=precision, radius="off"
            )
        )
        for family in FAMILIES
        for precision in precisions
    }
    rounds = interleaved_ms(calls, args.repeats)  # every family's passes share the machine's quiet and busy spells
    for family in FAMILIES:
        module = load_model(family).module
        gmac = multiply_adds(plain_twin(module), args.size) / 1e9  # the published layers' cost
        ms = {precision: min(rounds[family, precision]) for precision in precisions}
        reference = reference or ms["fp32"]
        rates = {p: 2 * gmac / (ms[p] * 1e-3) for p in ms}  # GFLOP/s reached
        fractions = f"{rates['fp32'] / fp32:.2f}" + (f" / {rates['bf16'] / bf16:.2f}" if "bf16" in ms else "")
        cells = " | ".join(f"{ms[p]:.0f}" for p in precisions)
        print(
            f"| {family} | {gmac:.1f} | {cells} | {reference / ms['fp32']:.2f}x | "
            f"{min(ms.values()) / dog:.0f}x | {fractions} |"
        )
    ratios = np.divide(rounds[FAMILIES[0], "fp32"], rounds[FAMILIES[-1], "fp32"])
    print(
        f"\nfp32 {FAMILIES[0]} / {FAMILIES[-1]} within each of {len(ratios)} rounds: median {np.median(ratios):.2f}x "
        f"(range {ratios.min():.2f}-{ratios.max():.2f}x)"
    )


if __name__ == "__main__":
    main()
