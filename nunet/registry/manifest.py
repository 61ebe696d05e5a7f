"""Models that are not shipped but can be downloaded on request: the manifest and ``nunet models fetch``.

nunet ships its default family and the ``nuclei-vgg`` backbone. The older families are release
assets listed in ``manifest.json`` (name, file, size, sha256, family, w, card): ``nunet models``
shows them as not installed and :func:`fetch` downloads one when asked, into
:func:`download_dir` (a model folder of the registry), verifying size and hash before the file
appears under its name. Nothing is downloaded unless asked.

The assets' base URL is the manifest's ``base_url``; ``NUNET_MODEL_URL`` replaces it (a mirror, or
a folder served on a cluster without internet). :func:`pack` writes the assets and the manifest
from a folder holding the model files, for whoever publishes a release.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from nunet._atomic import atomic_path
from nunet.errors import ModelError, UsageError
from nunet.registry.models import FIRST_FAMILY, download_dir

MANIFEST = "manifest.json"
URL_VAR = "NUNET_MODEL_URL"
#: Bytes read or written at a time while downloading and hashing.
CHUNK = 1 << 20


@dataclass(frozen=True)
class Download:
    """One downloadable model: its file (and card) under the base URL, with their sizes and hashes."""

    name: str
    file: str
    size: int
    sha256: str
    family: str | None = None
    w: float | None = None
    card: str | None = None
    card_size: int | None = None
    card_sha256: str | None = None
    description: str = ""


def read_manifest(path: str | os.PathLike | None = None) -> tuple[str, list[Download]]:
    """The base URL and the downloadable models of a manifest (default: the one nunet ships)."""
    if path is None:
        text = resources.files("nunet.registry").joinpath(MANIFEST).read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text)
    return str(data["base_url"]), [Download(**entry) for entry in data["models"]]


def downloadable(names: Iterable[str] = ()) -> list[Download]:
    """The manifest's models whose names are not in ``names`` (those installed)."""
    installed = set(names)
    return [d for d in read_manifest()[1] if d.name not in installed]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(
    name: str,
    dest: str | os.PathLike | None = None,
    *,
    manifest: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Download the model ``name`` (and its card) into ``dest`` (default :func:`download_dir`).

    Each file is written to a temporary file beside its destination, checked against the
    manifest's size and sha256, and only then renamed: a failed or tampered download leaves
    nothing under the model's name. A file already there with the right hash is kept.

    Raises
    ------
    UsageError
        For a name the manifest does not list (naming those it does).
    ModelError
        When a download fails or its hash differs (the URL and both hashes named).
    """
    base_url, entries = read_manifest(manifest)
    entry = next((e for e in entries if e.name == name), None)
    if entry is None:
        listed = ", ".join(e.name for e in entries) or "none"
        raise UsageError(f"'{name}' is not a downloadable model; the manifest lists: {listed}")
    base_url = os.environ.get(URL_VAR) or base_url
    folder = Path(dest) if dest is not None else download_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{folder}: cannot create the model folder ({exc.strerror or exc})") from None
    files = [(entry.file, entry.size, entry.sha256)]
    if entry.card and entry.card_sha256:
        files.append((entry.card, entry.card_size or 0, entry.card_sha256))
    for file, size, sha256 in files:
        _download(_join(base_url, file), folder / file, size, sha256, progress)
    return folder / entry.file


def _join(base_url: str, file: str) -> str:
    return base_url.rstrip("/") + "/" + file


def _download(url: str, path: Path, size: int, sha256: str, progress: Callable[[int, int], None] | None) -> None:
    import urllib.request

    if path.is_file() and path.stat().st_size == size and sha256_of(path) == sha256:
        return
    digest, done = hashlib.sha256(), 0
    try:
        with atomic_path(path) as tmp, urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while block := response.read(CHUNK):
                out.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress(done, size)
            if done != size or digest.hexdigest() != sha256:
                raise ModelError(
                    f"{url}: the download does not match the manifest ({done} bytes, sha256 {digest.hexdigest()}; "
                    f"expected {size} bytes, sha256 {sha256}); nothing was installed"
                )
    except OSError as exc:  # URLError, HTTPError, timeouts, a full disk
        raise ModelError(
            f"{url}: download failed ({getattr(exc, 'reason', None) or exc}); {URL_VAR} can name a mirror"
        ) from None


def pack(models: Iterable[str | os.PathLike], out_dir: str | os.PathLike, base_url: str) -> Path:
    """Write release assets for ``models`` (``.pt`` files; the ``.md`` card beside each is taken too)
    and their ``manifest.json`` into ``out_dir``; return the manifest's path."""
    from nunet.core.modelfile import read_metadata

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for model in models:
        path = Path(model)
        metadata = read_metadata(path)
        card = path.with_suffix(".md")
        shutil.copyfile(path, out / path.name)
        entry = Download(
            name=str(metadata.get("name") or path.stem),
            file=path.name,
            size=path.stat().st_size,
            sha256=sha256_of(path),
            family=metadata.get("family") or (FIRST_FAMILY if metadata.get("w") is not None else None),
            w=None if metadata.get("w") is None else float(metadata["w"]),
            description=str(metadata.get("description") or ""),
        )
        if card.is_file():
            shutil.copyfile(card, out / card.name)
            entry = Download(
                **{**asdict(entry), "card": card.name, "card_size": card.stat().st_size, "card_sha256": sha256_of(card)}
            )
        entries.append(entry)
    manifest = out / MANIFEST
    with atomic_path(manifest) as tmp:
        Path(tmp).write_text(
            json.dumps({"base_url": base_url, "models": [asdict(e) for e in entries]}, indent=1) + "\n",
            encoding="utf-8",
        )
    return manifest
