"""Claims on outputs: one run computes each output, and a dead run's claim is taken over.

Each output is claimed before its input is read: ``.<name>.nunet-claim`` beside it, holding an
OS lock (``fcntl.flock``) for as long as the output is being computed and written (the file names
the process and host, for people). A second run writing into the same folder at the same time
skips what the first one holds, so no image is computed twice. The kernel releases the lock when
its process dies, on any host, whatever its name or process id, so a claim whose lock can be
taken is stale (a run killed by SIGKILL or out of memory, a restarted container): it is taken
over, and the ``.<name>.*.part`` file that run left is removed. ``nunet filter`` and
``--overwrite`` follow the same rule.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CLAIM_SUFFIX = ".nunet-claim"


def _claim_path(output: Path) -> Path:
    return output.with_name(f".{output.name}{CLAIM_SUFFIX}")


@dataclass(frozen=True)
class Claim:
    """A held claim on an output: its claim file and the open descriptor that holds the lock."""

    path: Path
    fd: int

    def release(self) -> None:
        """Remove the claim file (if it is still this claim's) and drop the lock."""
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)


def claim(output: Path) -> Claim | None:
    """Claim ``output`` for this process; None when a live run holds it. A stale claim (its lock free:
    its process is gone) is taken over and the ``.part`` files its run left for this output removed."""
    import fcntl

    path = _claim_path(output)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # released and removed between our open and our lock: claim the new file
    if os.fstat(fd).st_size:  # left by a run that died holding it
        for part in output.parent.glob(f".{output.name}.*.part"):
            if part.is_dir():  # an OME-Zarr output being written
                shutil.rmtree(part, ignore_errors=True)
            else:
                part.unlink(missing_ok=True)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return Claim(path, fd)


@contextmanager
def claimed(output: Path) -> Iterator[Claim | None]:
    """:func:`claim` for the duration of a ``with`` block (None: another run holds it)."""
    held = claim(output)
    try:
        yield held
    finally:
        if held is not None:
            held.release()
