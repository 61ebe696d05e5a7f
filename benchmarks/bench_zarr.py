"""Planes/s of ``nunet.cluster.filter_zarr`` in this process and on LocalClusters of 1 and 2 workers.

Usage: ``python benchmarks/bench_zarr.py [--planes 16] [--size 400] [--model NAME] [--workers 1,2]``

Writes one synthetic OME-Zarr volume (``--planes`` planes of ``--size`` px square) to a temporary
folder, filters it into a new OME-Zarr image each time (fresh output; the cluster's start and
its workers' model loading reported apart), and prints planes/s, the ratio to one worker (measured in the same run) and
what one worker does per hour: planes, and GB of float32 input at this plane size. Each worker
is one process with one torch thread; on an N-core machine up to N workers can scale.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from nunet.options import DEFAULT_MODEL


def _load(model: str) -> str:
    """Load ``model`` in a worker's cache (the module itself cannot travel back)."""
    from nunet import load_model

    return load_model(model, "cpu").name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=16)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="default: the default model")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = parser.parse_args()

    import numpy as np
    from distributed import Client, LocalCluster

    from nunet.cluster import filter_zarr
    from nunet.core.runtime import cpu_info
    from nunet.data.synth import synth_image
    from nunet.io import Calibration, Image, write_image
    from nunet.options import FilterSettings

    info = cpu_info()
    print(f"CPU: {info.describe()}; {args.planes} planes of {args.size}^2 px, model {args.model}")
    folder = Path(tempfile.mkdtemp(prefix="bench_zarr_"))
    try:
        volume = np.stack([synth_image("sparse", (args.size, args.size), seed=i).image for i in range(args.planes)])
        source = write_image(
            Image(volume.astype(np.float32), "ZYX", Calibration(0.2, 0.2, "micron", 1.0)), folder / "in.ome.zarr"
        )
        settings = FilterSettings(model=args.model, device="cpu")
        rows = []
        start = time.perf_counter()
        filter_zarr(source, folder / "here.ome.zarr", settings)
        rows.append(("this process (all threads)", 0.0, time.perf_counter() - start))
        for n in (int(w) for w in args.workers.split(",")):
            started = time.perf_counter()
            with (
                LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=":0") as cluster,
                Client(cluster) as client,
            ):
                client.run(_load, args.model)  # warm-up: each worker loads the model once
                ready = time.perf_counter() - started
                start = time.perf_counter()
                filter_zarr(source, folder / f"w{n}.ome.zarr", settings, scheduler=cluster.scheduler_address)
                rows.append((f"LocalCluster, {n} worker(s) x 1 thread", ready, time.perf_counter() - start))
        one = next((r[2] for r in rows if r[0].startswith("LocalCluster, 1 ")), rows[0][2])
        gb_per_plane = args.size * args.size * 4 / 1e9
        print(f"{'run':<38}{'start s':>8}{'s':>8}{'planes/s':>10}{'x 1 worker':>11}")
        for name, ready, seconds in rows:
            print(f"{name:<38}{ready:>8.1f}{seconds:>8.1f}{args.planes / seconds:>10.2f}{one / seconds:>11.2f}")
        per_plane = one / args.planes
        print(
            f"one worker: {per_plane:.2f} s/plane (model loaded; output and pyramid writing included) = "
            f"{3600 / per_plane:.0f} planes/h = {3600 / per_plane * gb_per_plane:.1f} GB/h of float32 input "
            f"at {args.size}^2 px"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
