"""Per-call overhead of Fiji's "NU-Net Filter" next to the filter's own time, on a 512x512 plane.

Three figures, measured in one run with the same model:
- the filter itself (``nunet.api.filter_planes``), the baseline;
- the in-process path: a macro ``run("NU-Net Filter", ...)`` in this Python's JVM after
  ``nunet.fiji.register()`` (a pyimagej-like session);
- the worker path: a standalone ``java -jar ij.jar -batch`` macro calling the command in a loop;
  the first call starts the worker, the later ones are "warm".
Overhead = call time - filter time; target: < 20% of the filter time once the worker is warm.

Needs ImageJ (Debian's libij-java, or NUNET_IJ_JAR) and a display: on a server run
``xvfb-run -a python benchmarks/bench_fiji.py [--calls 10] [--model NAME]``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nunet.options import DEFAULT_MODEL

SIZE = 512


def filter_ms(model: str, calls: int) -> float:
    from nunet.api import filter_planes

    plane = np.random.default_rng(0).random((1, SIZE, SIZE), dtype=np.float32)
    filter_planes(plane, model, device="cpu")
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        filter_planes(plane, model, device="cpu")
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def inprocess_ms(imagej_dir: Path, model: str, calls: int) -> float:
    from jpype import JClass

    from nunet import fiji
    from nunet.io import Image

    fiji.start(imagej_dir, headless=False)
    fiji.register()
    JClass("ij.macro.Interpreter").batchMode = True
    imp = fiji.to_imageplus(Image(np.random.default_rng(0).random((SIZE, SIZE), dtype=np.float32), "YX"), "bench")
    times = []
    for _ in range(calls + 1):
        imp.show()
        start = time.perf_counter()
        fiji.run_macro(f'run("NU-Net Filter", "model={model} device=cpu");')
        times.append(time.perf_counter() - start)
        JClass("ij.WindowManager").getCurrentImage().close()
    return 1e3 * statistics.median(times[1:])


def worker_ms(imagej_dir: Path, model: str, calls: int) -> tuple[float, float]:
    macro = f"""
setBatchMode(true);
newImage("bench", "32-bit random", {SIZE}, {SIZE}, 1);
id = getImageID();
for (i = 0; i < {calls + 1}; i++) {{
    selectImage(id);
    t0 = getTime();
    run("NU-Net Filter", "model={model} device=cpu");
    print("call_ms " + (getTime() - t0));
    close();
}}
"""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.ijm"
        path.write_text(macro)
        ij_jar = os.environ.get("NUNET_IJ_JAR", "/usr/share/java/ij.jar")
        done = subprocess.run(
            [
                "java",
                f"-Dplugins.dir={imagej_dir}",
                "-Dpython.cachedir.skip=true",
                f"-Djava.io.tmpdir={tmp}",
                "-jar",
                ij_jar,
                "-batch",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    times = [float(v) for v in re.findall(r"call_ms ([0-9.]+)", done.stdout)]
    if len(times) != calls + 1:
        raise RuntimeError(f"the worker benchmark macro failed:\n{done.stdout}\n{done.stderr}")
    return times[0], statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="default: the default model")
    args = parser.parse_args()
    if not os.environ.get("DISPLAY"):
        sys.exit("needs a display for ImageJ 1.53's run(): use xvfb-run -a python benchmarks/bench_fiji.py")

    from nunet.integrations.fiji_install import install

    with tempfile.TemporaryDirectory() as tmp:
        imagej_dir = Path(tmp)
        install(imagej_dir)
        base = filter_ms(args.model, args.calls)
        first, warm = worker_ms(imagej_dir, args.model, args.calls)
        inproc = inprocess_ms(imagej_dir, args.model, args.calls)
    print(f"{SIZE}x{SIZE} plane, model {args.model}, median of {args.calls} calls")
    print(f"{'path':<28}{'ms/call':>9}{'overhead ms':>13}{'overhead %':>12}")
    print(f"{'filter only (baseline)':<28}{base:>9.1f}{'':>13}{'':>12}")
    for name, ms in (("in-process (register)", inproc), ("worker, warm", warm), ("worker, first call", first)):
        print(f"{name:<28}{ms:>9.1f}{ms - base:>13.1f}{100 * (ms - base) / base:>11.1f}%")
    print("target: warm overhead < 20% of the filter time")


if __name__ == "__main__":
    main()
