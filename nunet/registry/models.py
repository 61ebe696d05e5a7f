"""The model registry: named TorchScript models found in model folders.

Search order (the first folder holding a name wins, like ``PATH``):

1. the folders of the environment variable ``NUNET_MODEL_PATH`` (``os.pathsep``-separated);
2. :func:`download_dir`, where ``nunet models fetch`` puts models (:mod:`nunet.registry.manifest`);
3. the ``models/`` folder of the nunet source tree;
4. ``<sys.prefix>/share/nunet/models`` (where a wheel install puts the shipped models).

A file is read again whenever its size, inode or modification time changes (:func:`file_key`), so
a model replaced in place or by a rename is never served stale; folders named ``*.pt`` and files
that cannot be read are left out of the listing, and named in a one-line error when asked for.

A model is a ``*.pt`` TorchScript file carrying nunet metadata; its model card is the
Markdown file with the same stem (``nunet-w8.pt`` + ``nunet-w8.md``).

Families: models trained the same way at several strengths carry the same ``family`` and
their own ``w`` in their metadata; ``w=`` blends two members of one family (:func:`family_of`,
:func:`blend_weights`). Models with a w but no family key belong to the first family,
``FIRST_FAMILY`` (the paper's loss at w = 5..10).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from nunet.core.modelfile import read_metadata
from nunet.errors import ModelError
from nunet.options import DEFAULT_MODEL

if TYPE_CHECKING:
    from nunet.core.modelfile import LoadedModel

ENV_VAR = "NUNET_MODEL_PATH"
FIRST_FAMILY = "nunet-w"


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its file, card and metadata."""

    name: str
    path: Path
    card: Path | None
    metadata: dict

    @property
    def w(self) -> float | None:
        w = self.metadata.get("w")
        return None if w is None else float(w)

    @property
    def family(self) -> str | None:
        """The family of strengths the model belongs to (None: none)."""
        return _family(self.metadata)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def description(self) -> str:
        """The metadata description, else the first paragraph line of the model card."""
        if self.metadata.get("description"):
            return str(self.metadata["description"])
        if self.card is not None:
            for line in self.card.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.lstrip().startswith(("#", "---", "|")):
                    return line.strip()
        return ""


def download_dir() -> Path:
    """Where ``nunet models fetch`` puts models: ``$XDG_DATA_HOME/nunet/models`` (default
    ``~/.local/share/nunet/models``)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "nunet" / "models"


def model_dirs() -> list[Path]:
    """Return the existing model folders in search order."""
    dirs = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    dirs.append(download_dir())
    dirs.append(Path(__file__).resolve().parents[2] / "models")
    dirs.append(Path(sys.prefix) / "share" / "nunet" / "models")
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.append(d.resolve())
    return seen


def list_models() -> list[ModelEntry]:
    """Return every registered model, first occurrence of each name in search order.

    Files that are not nunet TorchScript models are ignored. Sorted by w (models without a w
    last), then name.
    """
    entries: dict[str, ModelEntry] = {}
    for folder in model_dirs():
        for path in sorted(folder.glob("*.pt")):
            try:
                metadata = _metadata(str(path), file_key(path))
            except (ModelError, OSError):  # a folder named *.pt, an unreadable or foreign file
                continue
            name = str(metadata.get("name") or path.stem)
            card = path.with_suffix(".md")
            entries.setdefault(name, ModelEntry(name, path, card if card.is_file() else None, metadata))
    return sorted(entries.values(), key=lambda e: (e.w is None, e.w or 0.0, e.name))


def file_key(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """What tells one version of a file from another: size, inode, modification and change time
    (a rewrite within the file system's timestamp resolution still changes size or inode, or
    ctime). Raises ModelError for a folder or a file that cannot be read."""
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ModelError(f"{os.fspath(path)}: cannot read the model file ({exc.strerror or exc})") from None
    if not os.path.isfile(path):
        raise ModelError(f"{os.fspath(path)}: not a model file (a folder?)")
    if not os.access(path, os.R_OK):
        raise ModelError(f"{os.fspath(path)}: cannot read the model file (permission denied)")
    return stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns


@lru_cache(maxsize=256)
def _metadata(path: str, key: tuple[int, int, int, int]) -> dict:
    """A model file's metadata, read once per file version (listing models in a loop stays cheap)."""
    return read_metadata(path)


def _family(metadata: dict) -> str | None:
    if metadata.get("family"):
        return str(metadata["family"])
    return FIRST_FAMILY if metadata.get("w") is not None else None


def family_of(name_or_path: str | os.PathLike) -> list[tuple[str, float]]:
    """The members ``(name, w)`` of the family of a model, sorted by w.

    Raises
    ------
    ModelError
        When the model belongs to no family (naming the families there are).
    """
    path = resolve_model(name_or_path)
    family = _family(_metadata(str(path), file_key(path)))
    members = [(e.name, e.w) for e in list_models() if e.w is not None and e.family == family]
    if family is None or not members:
        families = sorted({e.family for e in list_models() if e.family})
        names = {f: ", ".join(e.name for e in list_models() if e.family == f) for f in families}
        listed = "; ".join(f"{f}: {names[f]}" for f in families) or "none registered"
        raise ModelError(
            f"model '{os.fspath(name_or_path)}' has no family of strengths for w= (families: {listed}); "
            "choose a member with --model"
        )
    return sorted(members, key=lambda m: m[1])


def blend_weights(w: float, available: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Models and weights whose blend gives strength ``w``: the two registered w's around it.

    Parameters
    ----------
    w : float
        Requested strength.
    available : sequence of (name, w)
        Models with a known w.

    Returns
    -------
    list of (name, weight)
        One model with weight 1 for an exact match, else the two nearest with linear weights.
    """
    family = sorted(available, key=lambda item: item[1])
    if not family:
        raise ModelError("w= needs registered models with a w in their metadata; none found")
    for name, model_w in family:
        if abs(model_w - w) < 1e-9:
            return [(name, 1.0)]
    lo = [m for m in family if m[1] < w]
    hi = [m for m in family if m[1] > w]
    if not lo or not hi:
        span = ", ".join(f"{n} (w={mw:g})" for n, mw in family)
        raise ModelError(f"w={w:g} is outside the range of the registered models: {span}")
    (lo_name, lo_w), (hi_name, hi_w) = lo[-1], hi[0]
    t = (w - lo_w) / (hi_w - lo_w)
    return [(lo_name, 1.0 - t), (hi_name, t)]


def _looks_like_path(name_or_path: str) -> bool:
    return os.sep in name_or_path or "/" in name_or_path or name_or_path.endswith(".pt")


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Return the file of a registered model name, or the given path if it is a file.

    Raises
    ------
    ModelError
        For an unknown name (listing the available names) or a missing file.
    """
    text = os.fspath(name_or_path)
    if Path(text).is_file():
        return Path(text)
    if Path(text).is_dir():
        raise ModelError(f"{text}: a folder, not a model file")
    if _looks_like_path(text):
        raise ModelError(f"{text}: model file not found")
    for entry in list_models():
        if entry.name == text:
            return entry.path
    available = ", ".join(e.name for e in list_models()) or "none (see docs/models.md)"
    raise ModelError(f"unknown model '{text}'; available: {available}")


def load_model(name_or_path: "str | os.PathLike | LoadedModel" = DEFAULT_MODEL, device: str = "cpu") -> "LoadedModel":
    """Load a model by registered name or TorchScript path; the one loader of nunet.

    A file is loaded once per device and reused while it is unchanged (cheap in loops and
    batches; :func:`clear_cache` forgets). Callers must not modify the returned model.

    Parameters
    ----------
    name_or_path : str, path-like or LoadedModel
        A name from :func:`list_models` (e.g. ``"nunet-w8"``) or a ``.pt`` file. An already
        loaded model is returned as it is on its device, or loaded anew on another one (the
        given model is never moved).
    device : str
        Torch device (``"cpu"``, ``"cuda"``, ``"mps"``...).

    Returns
    -------
    LoadedModel
        With ``.module``, ``.metadata`` and ``.name``.
    """
    from nunet.core.modelfile import LoadedModel

    if isinstance(name_or_path, LoadedModel):
        if name_or_path.device == str(device):
            return name_or_path
        if name_or_path.path is None:
            raise ModelError(f"model '{name_or_path.name}' has no file to load on {device}")
        name_or_path = name_or_path.path
    path = resolve_model(name_or_path).resolve()
    return _load_file(str(path), file_key(path), str(device))


@lru_cache(maxsize=8)
def _load_file(path: str, key: tuple[int, int, int, int], device: str) -> "LoadedModel":
    from nunet.core.modelfile import load_model_file

    return load_model_file(path, device=device)


def load_count() -> int:
    """How many times this process has read a model file from disk (a cached model is not read
    again): what shows that a dask worker loads its model once."""
    return _load_file.cache_info().misses


def clear_cache() -> None:
    """Forget the models :func:`load_model` keeps (e.g. to free GPU memory) and the metadata read."""
    _load_file.cache_clear()
    _metadata.cache_clear()
