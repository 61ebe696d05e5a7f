"""TorchScript model files: writing them with their metadata, reading both back.

The metadata is a JSON document stored inside the TorchScript zip archive as the
extra file ``nunet.json``, so it can be read with :mod:`zipfile` alone: listing
models never imports torch and never unpickles anything.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nunet._atomic import atomic_path
from nunet._version import __version__
from nunet.core.preprocess import PERCENTILES, Frame
from nunet.errors import ModelError

if TYPE_CHECKING:
    import torch

METADATA_FILE = "nunet.json"

#: How inputs are brought to the training range and outputs back to [0, 1]; stored in every model.
NORMALISATION = {
    "input": "per plane: percentiles (0.1, 99.9) mapped linearly to 0..255, values outside clipped",
    "percentiles": list(PERCENTILES),
    "input_range": [0.0, 255.0],
    "output": "clip to 0..255, divide by 255",
    "output_range": [0.0, 1.0],
}


@dataclass
class LoadedModel:
    """A TorchScript NU-Net ready to run.

    Attributes
    ----------
    module : torch.jit.ScriptModule
        The scripted network, in eval mode, on ``device``.
    metadata : dict
        The metadata stored in the file (name, w, nunet version, normalisation, ...).
    path : Path
        The file the model was loaded from.
    device : str
        The torch device the module lives on.
    """

    module: Any
    metadata: dict = field(default_factory=dict)
    path: Path | None = None
    device: str = "cpu"
    _bf16: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The model's registered name (falls back to the file stem)."""
        return str(self.metadata.get("name") or (self.path.stem if self.path else "unnamed"))

    @property
    def w(self) -> float | None:
        """The morphological/content loss ratio the model was trained with, if known."""
        w = self.metadata.get("w")
        return None if w is None else float(w)

    @property
    def percentiles(self) -> tuple[float, float]:
        """The input percentiles mapped to 0 and 255 in training (``PERCENTILES`` where the file says none)."""
        low, high = self.metadata.get("normalisation", {}).get("percentiles", PERCENTILES)
        return float(low), float(high)

    @property
    def frame(self) -> Frame:
        """The frame around each normalised plane the model was trained with (pad 0: none; see
        :func:`nunet.core.preprocess.frame_plane`)."""
        return Frame(int(self.metadata.get("frame_pad", 0)), str(self.metadata.get("frame_fill", "mean")))

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        return self.module(x)

    def network(self, precision: str) -> Callable[["torch.Tensor"], "torch.Tensor"]:
        """What runs a whole-plane pass at ``precision`` (fp32, bf16 or fp16): on a CPU at bf16 the
        network in native bf16 (:class:`nunet.core.bf16.Bf16Net`, built once per loaded model), else
        :attr:`module` (the caller's autocast sets its precision). A network whose layers are not
        NU-Net's sequence keeps :attr:`module`."""
        if precision != "bf16" or self.device != "cpu":
            return self.module
        if self._bf16 is None:
            from nunet.core.bf16 import Bf16Net

            try:
                self._bf16 = Bf16Net(self.module)
            except ValueError:
                self._bf16 = self.module
        return self._bf16


@contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch's DeprecationWarning for TorchScript: the model format is TorchScript on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated", category=DeprecationWarning)
        yield


def save_model(
    module: "torch.nn.Module", path: str | os.PathLike, *, name: str, w: float | None, **metadata: Any
) -> Path:
    """Script ``module`` with ``torch.jit.script`` and save it with its metadata.

    Parameters
    ----------
    module : torch.nn.Module
        The network (normally a :class:`nunet.NUNet`).
    path : path-like
        Destination ``.pt`` file; written atomically (temporary file, then rename).
    name : str
        Registry name, e.g. ``"nunet-w8"``.
    w : float or None
        Morphological/content loss ratio used in training (None for an untrained net).
    **metadata
        Extra JSON-serialisable entries, e.g. ``description=...`` or ``training={...}``.

    Returns
    -------
    Path
        The written file.
    """
    import torch

    from nunet.core.model import count_parameters

    path = Path(path)
    meta = {
        "name": name,
        "w": w,
        "nunet_version": __version__,
        "architecture": type(module).__name__,
        "parameters": count_parameters(module),
        "normalisation": NORMALISATION,
        **metadata,
    }
    try:
        payload = json.dumps(meta, indent=2, sort_keys=True)
    except TypeError as exc:
        raise ModelError(f"{path}: metadata is not JSON-serialisable ({exc})") from exc
    with _quiet_jit():
        scripted = torch.jit.script(copy.deepcopy(module).eval().cpu())
        # torch names the archive's inner folder after the file: save under the final name in a
        # private folder beside the target, then rename into place atomically
        with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=path.parent, prefix=".nunet-") as folder:
            named = Path(folder) / path.name
            torch.jit.save(scripted, str(named), _extra_files={METADATA_FILE: payload})
            os.replace(named, tmp)
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """Read a model file's metadata without torch and without unpickling.

    Raises
    ------
    ModelError
        If the file is not a TorchScript archive carrying ``nunet.json``.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            entry = next((n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")), None)
            if entry is None:
                raise ModelError(f"{path}: TorchScript file without nunet metadata ({METADATA_FILE})")
            return json.loads(archive.read(entry))
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: model file not found") from exc
    except OSError as exc:  # a folder, no permission, an I/O error
        raise ModelError(f"{path}: cannot read the model file ({exc.strerror or exc})") from exc
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a nunet TorchScript model ({exc})") from exc


def load_model_file(path: str | os.PathLike, device: str = "cpu") -> LoadedModel:
    """Load a TorchScript model file (``torch.jit.load``, never a pickle) onto ``device``."""
    import torch

    path = Path(path)
    metadata = read_metadata(path)
    try:
        with _quiet_jit():
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: cannot load TorchScript model ({first_line})") from exc
    module.eval()
    check_contract(module, path, device)
    return LoadedModel(module=module, metadata=metadata, path=path, device=str(device))


#: The probe plane of :func:`check_contract` (padded planes are multiples of 4, at least 8 px).
PROBE_SHAPE = (1, 1, 12, 16)


def check_contract(module: "torch.nn.Module", path: Path, device: str = "cpu") -> None:
    """Run ``module`` once on a tiny plane: a NU-Net maps (N, 1, H, W) float to a new (N, 1, H, W)
    float plane. Anything else (an Identity, a classifier, a wrong output shape) is a ModelError
    naming the file, raised at load time instead of at the first image."""
    import torch

    ramp = torch.linspace(0.0, 255.0, PROBE_SHAPE[2] * PROBE_SHAPE[3]).reshape(PROBE_SHAPE).to(device)
    try:
        with torch.inference_mode():
            out = module(ramp)
    except Exception as exc:  # TorchScript raises several kinds for a wrong signature or shape
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: does not run as a NU-Net on a {PROBE_SHAPE} plane ({first_line})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != PROBE_SHAPE or not out.is_floating_point():
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"{path}: not a NU-Net: a {PROBE_SHAPE} plane gave {shape}, expected the same shape")
    if torch.equal(out, ramp):
        raise ModelError(f"{path}: not a NU-Net: it returns its input unchanged")
    if not torch.isfinite(out).all():
        raise ModelError(f"{path}: not a usable NU-Net: its output on a {PROBE_SHAPE} plane has NaN or infinite values")
