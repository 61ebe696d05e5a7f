"""Training speed: iterations/s at content batch 16, 256x256 crops (the paper's setting), per backbone.

Usage: ``python benchmarks/bench_train.py [--steps 3] [--batch 16] [--crop 256] [--device auto]``
Prints seconds per step and iterations/s for each download-free backbone, measured in the same run,
and the ratio to random-vgg19 (VGG19's cost is the same with ImageNet weights).
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--target-batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from nunet.training.config import load_config
    from nunet.training.loop import train

    results = {}
    for backbone in ("random-vgg19", "random-multiscale"):
        with tempfile.TemporaryDirectory() as out:
            config = load_config(
                None,
                {
                    "name": "bench",
                    "synthetic_content": 1,
                    "synthetic_masks": args.target_batch,
                    "content_batch": args.batch,
                    "target_batch": args.target_batch,
                    "crop": args.crop,
                    "steps": args.steps,
                    "dry_run_steps": 1,
                    "device": args.device,
                    "backbone": backbone,
                    "output_dir": out,
                    "checkpoint_every": 10_000,
                },
            )
            stamps = []
            train(config, progress=lambda step, total, record: stamps.append(time.perf_counter()))
        per_step = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
        results[backbone] = per_step
    print(f"content batch {args.batch}, target batch {args.target_batch}, crop {args.crop}, device {args.device}")
    for backbone, seconds in results.items():
        print(
            f"{backbone:<20}{seconds:>8.2f} s/step {1 / seconds:>8.3f} it/s "
            f"{seconds / results['random-vgg19']:>6.2f}x random-vgg19"
        )


if __name__ == "__main__":
    main()
