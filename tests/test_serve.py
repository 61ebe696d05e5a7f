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
    proc = subprocess.Popen(
        [sys.executable, "-m", "nunet", "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline().decode().startswith("READY nunet ")
        assert request(proc, {"op": "ping"})[0] == "OK 0 0 0"
        planes = blobs((3, 40, 36)).astype(np.float32)
        answer, out = request(
            proc, {"op": "filter", "planes": 3, "height": 40, "width": 36, "model": "nunet-test"}, planes
        )
        assert answer == "OK 3 40 36"
        np.testing.assert_allclose(out, enhance(planes, "nunet-test", axes="ZYX"), atol=1e-6)
        answer, _ = request(
            proc, {"op": "filter", "planes": 1, "height": 8, "width": 8, "model": "nope"}, np.zeros((1, 8, 8))
        )
        assert answer.startswith("ERR unknown model 'nope'; available:")
        answer, _ = request(
            proc,
            {"op": "filter", "planes": 1, "height": 8, "width": 8, "model": "nunet-test", "colour": "red"},
            np.zeros((1, 8, 8)),
        )
        assert answer.startswith("ERR unknown option(s): colour; known:")
        assert request(proc, {"op": "ping"})[0] == "OK 0 0 0"  # still in step after errors
        proc.stdin.write(b"this is not json\n")
        proc.stdin.flush()
        assert proc.stdout.readline().decode().startswith("ERR JSONDecodeError")
        answer, _ = request(proc, {"op": "filter", "planes": 1, "height": "eight", "width": 8})
        assert answer.startswith("ERR ValueError") and "eight" in answer
        answer, _ = request(
            proc, {"op": "filter", "planes": 1, "height": 8, "width": 8, "tile_size": -5}, np.zeros((1, 8, 8))
        )
        assert answer.startswith("ERR --tile-size: must be 0 (never tile) or at least 8 px")
        answer, _ = request(proc, {"op": "launch"})
        assert answer == "ERR ValueError: unknown op 'launch'"
        assert request(proc, {"op": "ping"})[0] == "OK 0 0 0"
        proc.stdin.close()  # Fiji exiting closes the pipe: the worker ends
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert b"worker" in proc.stderr.read()


def test_worker_ends_cleanly_when_the_pipe_closes_mid_payload(model_dir):
    """Fiji killed while sending: the payload is short, the pipe closes; the worker exits 0 without output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nunet", "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline().decode().startswith("READY")
        header = {"op": "filter", "planes": 2, "height": 16, "width": 16, "model": "nunet-test"}
        proc.stdin.write((json.dumps(header) + "\n").encode() + np.zeros(100, "<f4").tobytes())
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == b""
    finally:
        proc.kill()


def test_macro_options_map_to_filter_settings():
    """The "NU-Net Filter" macro keys (written into nunet.properties for the plugin) each set a
    FilterSettings option, or are the plugin's own ("replace")."""
    from nunet.integrations.fiji_install import MACRO_OPTIONS
    from nunet.options import SETTING_NAMES

    assert {v for v in MACRO_OPTIONS.values() if v is not None} <= set(SETTING_NAMES)
    assert [k for k, v in MACRO_OPTIONS.items() if v is None] == ["replace"]


def test_worker_stops_quietly_on_sigterm(model_dir):
    """Fiji's Process.destroy() sends SIGTERM: the worker exits 0 with one line in its log, no traceback."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "nunet", "serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline().decode().startswith("READY")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert b"stopped by a signal" in stderr and b"Traceback" not in stderr
    finally:
        proc.kill()
