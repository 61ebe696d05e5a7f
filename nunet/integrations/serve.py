"""The filter worker behind Fiji's "NU-Net Filter" command (``nunet serve``).

A standalone Fiji has no CPython in its JVM, so its plugin starts this worker once and
keeps it for the session: torch and the model load once, later calls cost only the
transfer and the filter itself. The protocol runs over stdin/stdout, no temporary files:

- on start the worker writes the line ``READY nunet <version>``;
- a request is one JSON line ``{"op": "filter", "planes": P, "height": H, "width": W,
  "pixel_width": 0.65, "unit": "micron", "model": "nunet-v11", "w": null, "tile_size": null,
  "device": "auto", "radius": "auto"}`` followed by ``P*H*W`` little-endian float32 values (the
  planes of one image, row-major: the radius is estimated once for them all); ``pixel_width`` and
  ``unit`` (the image's calibration, optional) convert a radius given as a length;
- the answer is the line ``OK P H W`` followed by as many float32 values (the filtered
  planes, in [0, 1]), or the single line ``ERR <message>`` after which the worker goes on;
- ``{"op": "ping"}`` answers ``OK 0 0 0``; ``{"op": "quit"}`` or end of input ends the worker,
  so it exits with the Fiji that started it.

Anything else the worker would print goes to stderr (the plugin logs it to a file).
"""

from __future__ import annotations

import json
import sys
from typing import BinaryIO

import numpy as np

from nunet._version import __version__
from nunet.errors import NUNetError

#: Header keys of the protocol itself and of the image's calibration; every other key is a FilterSettings option.
PROTOCOL_KEYS = ("op", "planes", "height", "width", "pixel_width", "unit")


def handle_request(header: dict, planes: np.ndarray) -> np.ndarray:
    """Filter ``planes`` (P, H, W) with the options of a request header; float32 in [0, 1]."""
    from nunet.api import filter_planes_with, resolve_settings
    from nunet.io import Calibration
    from nunet.options import FilterSettings

    settings = resolve_settings(
        FilterSettings.from_mapping({k: v for k, v in header.items() if k not in PROTOCOL_KEYS})
    )
    calibration = Calibration(float(header.get("pixel_width") or 1.0), unit=header.get("unit"))
    return filter_planes_with(np.asarray(planes, dtype=np.float32), settings, calibration)


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError(f"input ended {left} bytes short of a {size}-byte payload")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def serve(stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Answer requests from ``stdin`` on ``stdout`` until end of input or ``quit``; return 0."""
    stdout.write(f"READY nunet {__version__}\n".encode())
    stdout.flush()
    while True:
        line = stdin.readline()
        if not line:
            return 0
        try:
            header = json.loads(line)
            op = header.get("op")
            if op == "quit":
                return 0
            if op == "ping":
                stdout.write(b"OK 0 0 0\n")
            elif op == "filter":
                shape = (int(header["planes"]), int(header["height"]), int(header["width"]))
                payload = _read_exact(stdin, 4 * shape[0] * shape[1] * shape[2])
                planes = np.frombuffer(payload, dtype="<f4").reshape(shape)
                result = handle_request(header, planes).astype("<f4", copy=False)
                stdout.write(f"OK {shape[0]} {shape[1]} {shape[2]}\n".encode())
                stdout.write(result.tobytes())
            else:
                raise ValueError(f"unknown op {op!r}")
        except EOFError:
            return 0
        except Exception as exc:  # the worker reports and carries on with the next request
            message = str(exc) if isinstance(exc, NUNetError) else f"{type(exc).__name__}: {exc}"
            stdout.write(f"ERR {' '.join(message.split())}\n".encode())
        stdout.flush()


def main() -> int:
    """Run the worker on the process's stdin/stdout (stdout text goes to stderr)."""
    import os

    protocol_out = sys.stdout.buffer
    sys.stdout = sys.stderr
    print(f"nunet worker {__version__} started, pid {os.getpid()}", file=sys.stderr, flush=True)
    try:
        return serve(sys.stdin.buffer, protocol_out)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM when Fiji stops the worker: a quiet exit
        print(f"nunet worker {os.getpid()} stopped by a signal", file=sys.stderr, flush=True)
        return 0
