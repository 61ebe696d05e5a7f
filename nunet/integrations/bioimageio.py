"""``nunet export``: a nunet model as a bioimage.io package (spec 0.5) for deepImageJ, JDLL and bioimageio.core.

The package holds the model's TorchScript file and, optionally, ONNX weights exported from a
plain-form twin of the network (:mod:`nunet.core.plain`; checked against TorchScript on several
sizes), test tensors computed by nunet itself (the same planes as sample TIFFs), a cover image,
the model card as documentation, with two notes: the model must not be run block-wise
(InstanceNorm uses whole-plane statistics), and the nucleus radius the weights expect (the spec's
preprocessing cannot resize, so the package runs at the image's own scale, as ``radius="off"``).
nunet's preprocessing is in the spec's own terms: ``scale_range`` (percentiles 0.1/99.9 over
y, x) -> ``clip`` 0..1 -> ``scale_linear`` x255; postprocessing ``clip`` 0..255 ->
``scale_linear`` x1/255. Needs the ``[bioimageio]`` extra.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nunet.errors import NUNetError, UsageError

if TYPE_CHECKING:
    from nunet.core.preprocess import Frame

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17
#: Largest max abs difference allowed between ONNX and TorchScript outputs on [0, 1].
ONNX_TOLERANCE = 1e-4
TEST_SIDE = 256
PAPER = "Lim, Beaurepaire & Chessel: NU-Net, a self-supervised smart filter for enhancing blobs in bioimages"
BLOCKWISE_NOTE = (
    "Do not run this model block-wise (tiled by the consumer): its InstanceNorm layers use the statistics of the "
    "whole plane, and bioimageio.core's block-wise prediction differs from whole-plane prediction by up to ~1.0 on "
    "[0, 1]. nunet's own tiling (nunet.enhance) is exact."
)


def radius_note(radius: float) -> str:
    """The package documentation's note on object size (the spec's preprocessing has no resize step)."""
    return (
        f"Nucleus size: the weights were trained on nuclei of a median radius of about {radius:g} px, and this "
        "package filters each image at its own scale (bioimage.io preprocessing cannot resize). Nuclei much larger "
        "than that come out as rings, much smaller ones merge: resize the image so its nuclei have a radius of "
        f"about {radius:g} px before the model, and the output back (nunet does both itself: `--radius auto`)."
    )


def _requirements():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        from bioimageio.spec import save_bioimageio_package
        from bioimageio.spec.model import v0_5
    except ImportError as exc:
        raise UsageError(
            f"nunet export needs the bioimageio extra: pip install 'nunet-filter[bioimageio]' ({exc})"
        ) from None
    return v0_5, save_bioimageio_package


def export_onnx(module, path: Path, sizes=((64, 64), (100, 132), (256, 200)), frame: "Frame | None" = None) -> float:
    """Write ONNX weights (opset 17, dynamic batch/y/x) of a NU-Net and return the largest difference
    from ``module`` on [0, 1] over ``sizes``; a difference above ``ONNX_TOLERANCE`` is an error.
    ``frame``: the model's (:class:`nunet.core.preprocess.Frame`); both then run inside it
    (:class:`nunet.core.model.Framed`)."""
    import warnings

    import onnxruntime
    import torch

    from nunet.core.model import Framed
    from nunet.core.plain import plain_twin

    twin = plain_twin(module)
    if frame is not None and frame.pad:
        module, twin = Framed(module, frame.pad, frame.fill), Framed(twin, frame.pad, frame.fill)
    axes = {0: "batch", 2: "y", 3: "x"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and constant-folding notes
        torch.onnx.export(
            twin,
            torch.rand(1, 1, 64, 64) * 255,
            str(path),
            opset_version=ONNX_OPSET,
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": axes, "output": axes},
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng, worst = np.random.default_rng(0), 0.0
    for height, width in sizes:
        x = (rng.random((2, 1, height, width)) * 255).astype(np.float32)
        with torch.inference_mode():
            expected = module(torch.from_numpy(x)).clamp(0, 255).numpy() / 255
        got = np.clip(session.run(None, {"input": x})[0], 0, 255) / 255
        worst = max(worst, float(np.abs(expected - got).max()))
    if worst > ONNX_TOLERANCE:
        raise NUNetError(f"{path}: ONNX output differs from TorchScript by {worst:.2g} (> {ONNX_TOLERANCE})")
    return worst


def _test_image(sample: Path | None) -> np.ndarray:
    """A (TEST_SIDE, TEST_SIDE) float32 plane: the sample's first plane (centre crop), or synthetic nuclei."""
    if sample is None:
        from nunet.data.synth import synth_image

        return synth_image("dense", (TEST_SIDE, TEST_SIDE), seed=7).image.astype(np.float32)
    from nunet.core.preprocess import to_grey
    from nunet.io import read_image

    image = read_image(sample)
    data, axes = to_grey(image.data, image.axes)
    plane = np.asarray(data, np.float32).reshape((-1,) + data.shape[-2:])[0]
    y0, x0 = max(0, (plane.shape[0] - TEST_SIDE) // 2), max(0, (plane.shape[1] - TEST_SIDE) // 2)
    plane = plane[y0 : y0 + TEST_SIDE, x0 : x0 + TEST_SIDE]
    height, width = (max(8, n - n % 4) for n in plane.shape)
    if plane.shape[0] < 8 or plane.shape[1] < 8:
        raise UsageError(f"{sample}: the sample must be at least 8x8 pixels")
    return np.ascontiguousarray(plane[:height, :width])


def check_package_path(out: Path, overwrite: bool = False) -> None:
    """Before any work: ``out`` is a .zip in a writable folder, and an existing file is replaced only
    with ``overwrite`` and only when it is a package nunet wrote (a UsageError naming it otherwise)."""
    from nunet.batch.plan import check_writable_folder

    if out.suffix != ".zip":
        raise UsageError(f"{out}: the package must be a .zip file")
    if out.exists():
        if not overwrite:
            raise UsageError(f"{out}: exists; nunet never replaces it without --overwrite")
        if not written_by_nunet_export(out):
            raise UsageError(f"{out}: exists and is not a package nunet exported; it is never replaced")
    check_writable_folder(out.parent)


def written_by_nunet_export(path: Path) -> bool:
    """Whether ``path`` is a bioimage.io package that nunet exported (its description carries nunet's tag)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n in ("rdf.yaml", "bioimageio.yaml")]
            return bool(names) and b"- nunet" in archive.read(names[0])
    except (OSError, zipfile.BadZipFile):
        return False


def _repack(source: Path, target: str) -> None:
    """Copy a zip with its entries sorted and a fixed timestamp: the same package gives the same bytes."""
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in sorted(src.namelist()):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            dst.writestr(info, src.read(name))


def export_bioimageio(
    model: str, out: Path, formats: tuple[str, ...] = FORMATS, sample: Path | None = None, overwrite: bool = False
) -> Path:
    """Write ``out`` (a .zip bioimage.io package) for a registered model name or TorchScript file,
    atomically; the same model and sample give the same bytes (:func:`_repack`)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or "torchscript" not in formats:
        raise UsageError(f"--format: give torchscript, optionally with onnx (got {', '.join(formats)})")
    check_package_path(out, overwrite)
    v0_5, save_package = _requirements()
    import tifffile
    import torch

    from nunet.api import enhance, model_radius
    from nunet.registry.models import list_models, load_model

    loaded = load_model(model, "cpu")
    card = next((e.card for e in list_models() if e.path.resolve() == loaded.path.resolve()), None)
    card = card or loaded.path.with_suffix(".md")
    raw = _test_image(sample)
    expected = enhance(raw, loaded, device="cpu", axes="YX", radius="off")  # the package cannot resize
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if loaded.frame.pad:  # the frame goes into the weights: the spec has no such preprocessing step
            from nunet.core.model import Framed

            framed = Framed(loaded.module, loaded.frame.pad, loaded.frame.fill)
            torch.jit.save(torch.jit.script(framed), folder / "weights.pt")
        else:
            shutil.copyfile(loaded.path, folder / "weights.pt")
        np.save(folder / "test_input.npy", raw[None, None])
        np.save(folder / "test_output.npy", expected[None, None].astype(np.float32))
        tifffile.imwrite(folder / "sample_input.tif", raw)  # the same plane as an image, for viewers
        tifffile.imwrite(folder / "sample_output.tif", expected.astype(np.float32))
        _cover(raw, expected, folder / "cover.png")
        text = card.read_text(encoding="utf-8") if card.is_file() else f"# {loaded.name}\n"
        usage = f"{BLOCKWISE_NOTE}\n\n{radius_note(model_radius(loaded))}"
        (folder / "README.md").write_text(f"{text.rstrip()}\n\n## Use in bioimage.io tools\n\n{usage}\n")
        weights = {
            "torchscript": v0_5.TorchscriptWeightsDescr(
                source=folder / "weights.pt", pytorch_version=v0_5.Version(torch.__version__.split("+")[0])
            )
        }
        if "onnx" in formats:
            export_onnx(loaded.module, folder / "weights.onnx", frame=loaded.frame)
            weights["onnx"] = v0_5.OnnxWeightsDescr(
                source=folder / "weights.onnx", opset_version=ONNX_OPSET, parent="torchscript"
            )
        low, high = loaded.percentiles
        space = [v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=8, step=4)) for a in "yx"]
        descr = v0_5.ModelDescr(
            name=f"NU-Net {loaded.name}",
            description=(
                "NU-Net smart filter: enhances nuclei and cells (blobs), removes background; a drop-in "
                "replacement for a DoG/LoG step. Grey input of any range, output in [0, 1]."
            ),
            authors=[v0_5.Author(name="nunet developers")],
            cite=[v0_5.CiteEntry(text=PAPER, doi=v0_5.Doi("10.1007/978-3-031-25069-9_19"))],
            license=v0_5.LicenseId("BSD-3-Clause"),
            documentation=v0_5.FileDescr(source=folder / "README.md"),
            covers=[v0_5.FileDescr(source=folder / "cover.png")],
            tags=["nuclei", "blob enhancement", "denoising", "fluorescence", "2d", "pytorch", "nunet"],
            inputs=[
                v0_5.InputTensorDescr(
                    id=v0_5.TensorId("input"),
                    axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("grey")]), *space],
                    test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"),
                    sample_tensor=v0_5.FileDescr(source=folder / "sample_input.tif"),
                    preprocessing=[
                        v0_5.ScaleRangeDescr(
                            kwargs=v0_5.ScaleRangeKwargs(
                                axes=[v0_5.AxisId("y"), v0_5.AxisId("x")], min_percentile=low, max_percentile=high
                            )
                        ),
                        v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=1.0)),
                        v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearKwargs(gain=255.0)),
                    ],
                )
            ],
            outputs=[
                v0_5.OutputTensorDescr(
                    id=v0_5.TensorId("output"),
                    axes=[
                        v0_5.BatchAxis(),
                        v0_5.ChannelAxis(channel_names=[v0_5.Identifier("enhanced")]),
                        *(
                            v0_5.SpaceOutputAxis(
                                id=v0_5.AxisId(a),
                                size=v0_5.SizeReference(tensor_id=v0_5.TensorId("input"), axis_id=v0_5.AxisId(a)),
                            )
                            for a in "yx"
                        ),
                    ],
                    test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"),
                    sample_tensor=v0_5.FileDescr(source=folder / "sample_output.tif"),
                    data=v0_5.IntervalOrRatioDataDescr(range=(0.0, 1.0)),
                    postprocessing=[
                        v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=255.0)),
                        v0_5.ScaleLinearDescr(kwargs=v0_5.ScaleLinearKwargs(gain=1.0 / 255.0)),
                    ],
                )
            ],
            weights=v0_5.WeightsDescr(**weights),
            timestamp=v0_5.Datetime(datetime.fromtimestamp(loaded.path.stat().st_mtime, timezone.utc)),
        )
        saved = Path(save_package(descr, output_path=folder / "package.zip"))
        from nunet._atomic import atomic_path

        with atomic_path(out) as tmp:
            _repack(saved, tmp)
        return out


def _cover(raw: np.ndarray, filtered: np.ndarray, path: Path) -> None:
    """A 2:1 cover image: the input (percentile-stretched) beside nunet's output."""
    import imageio.v3 as iio

    lo, hi = np.percentile(raw, (0.1, 99.9))
    left = np.clip((raw - lo) / max(hi - lo, 1e-12), 0, 1)
    iio.imwrite(path, (np.hstack([left, filtered]) * 255).astype(np.uint8))
