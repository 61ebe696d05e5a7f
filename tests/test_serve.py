"""The `nunet serve` worker protocol, spoken by a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from conftest import blobs
from nunet import enhance


def request(proc, header: dict, planes: np.ndarray | None = None) -> tuple[str, np.ndarray | None]:
    proc.stdin.write((json.dumps(header) + "\n").encode())
    if planes is not None:
        proc.stdin.write(planes.astype("<f4").tobytes())
    proc.stdin.flush()
    answer = proc.stdout.readline().decode().strip()
    if not answer.startswith("OK "):
        return answer, None
    p, h, w = (int(v) for v in answer.split()[1:])
    return answer, np.frombuffer(proc.stdout.read(4 * p * h * w), "<f4").reshape(p, h, w)


def test_worker_protocol(model_dir):
    proc = subprocess.Popen([sys.executable, "-m", "nunet", "serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().decode().startswith("READY nunet ")
        assert request(proc, {"op": "ping"})[0] == "OK 0 0 0"
        planes = blobs((3, 40, 36)).astype(np.float32)
        answer, out = request(proc, {"op": "filter", "planes": 3, "height": 40, "width": 36, "model": "nunet-test"},
                              planes)
        assert answer == "OK 3 40 36"
        np.testing.assert_allclose(out, enhance(planes, "nunet-test", axes="ZYX"), atol=1e-6)
        answer, _ = request(proc, {"op": "filter", "planes": 1, "height": 8, "width": 8, "model": "nope"},
                            np.zeros((1, 8, 8)))
        assert answer.startswith("ERR unknown model 'nope'; available:")
        answer, _ = request(proc, {"op": "filter", "planes": 1, "height": 8, "width": 8, "model": "nunet-test",
                                   "colour": "red"}, np.zeros((1, 8, 8)))
        assert answer == "ERR ValueError: unknown option(s): colour"
        assert request(proc, {"op": "ping"})[0] == "OK 0 0 0"  # still in step after errors
        proc.stdin.close()  # Fiji exiting closes the pipe: the worker ends
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert b"worker" in proc.stderr.read()
