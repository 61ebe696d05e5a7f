"""ms/plane of each classical filter and of NU-Net on the same synthetic planes.

Usage: ``python benchmarks/bench_filters.py [--size 400] [--planes 5] [--model NAME]``
Prints each filter's median time per plane and its ratio to the DoG, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

from nunet.data.synth import synth_image
from nunet.evaluation import baselines
from nunet.options import DEFAULT_MODEL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--planes", type=int, default=5)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="default: the default model")
    args = parser.parse_args()

    from nunet import enhance, load_model

    planes = [synth_image("sparse", (args.size, args.size), seed=i) for i in range(args.planes)]
    model = load_model(args.model, "cpu")
    methods = {
        name: (lambda s, name=name: baselines.classical(name, s.image, s.radius)) for name in baselines.CLASSICAL
    }
    methods[f"NU-Net ({args.model})"] = lambda s: enhance(s.image, model, device="cpu")
    times = {}
    for name, run in methods.items():
        run(planes[0])  # warm-up
        samples = []
        for s in planes:
            start = time.perf_counter()
            run(s)
            samples.append(time.perf_counter() - start)
        times[name] = 1e3 * statistics.median(samples)
    print(f"{args.size}x{args.size} planes, median of {args.planes}")
    print(f"{'filter':<28}{'ms/plane':>10}{'x DoG':>8}")
    for name, ms in times.items():
        print(f"{name:<28}{ms:>10.1f}{ms / times['dog']:>8.1f}")


if __name__ == "__main__":
    main()
