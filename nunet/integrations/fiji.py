"""NU-Net inside a JVM running ImageJ: pyimagej sessions, scyjava, and "NU-Net Filter" in-process.

Everything here uses the ImageJ 1 API (``ij.*``) that Fiji's legacy layer exposes, so the
same calls work in a pyimagej session driving Fiji and on a plain ``ij.jar``::

    from nunet.integrations import fiji
    fiji.start()                                  # or reuse the JVM of imagej.init(...)
    imp = fiji.to_imageplus(nunet.read_image("cells.tif"))
    out = fiji.filter_imageplus(imp, model="nunet-v11")
    fiji.register()                               # macros' run("NU-Net Filter", ...) now run here

scyjava and JPype are imported only by :func:`start` and the functions that need a JVM.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nunet.errors import NUNetError
from nunet.io import Calibration, Image
from nunet.options import DEFAULT_MODEL

ENV_IJ_JAR = "NUNET_IJ_JAR"
ENV_IMAGEJ_DIR = "NUNET_IMAGEJ_DIR"
DEBIAN_IJ_JAR = Path("/usr/share/java/ij.jar")
INPROCESS_KEY = "nunet.filter"
CLOSED = "closed"  # INPROCESS_KEY's value once the serving Python session ends: the plugin then fails clearly
ERROR_KEY = "nunet.error"  # where the plugin leaves its last failure's message
DRAIN_S = 30.0  # at exit, how long in-process calls already running may take to finish

_registered: list[Any] = []  # keeps the JPype proxy alive while it is registered


def classpath(fiji_dir: str | os.PathLike | None = None) -> list[Path]:
    """The jars for a JVM: a Fiji.app's ``jars/`` and ``plugins/`` jars, plus an ImageJ 1 jar.

    When the folder has no ``ij*.jar`` (a bare plugins folder), or without ``fiji_dir``, the
    ImageJ jar is ``$NUNET_IJ_JAR``, else Debian's ``/usr/share/java/ij.jar``.
    """
    jars: list[Path] = []
    if fiji_dir is not None:
        root = Path(fiji_dir)
        if not root.is_dir():
            raise NUNetError(f"{root}: not a Fiji.app or ImageJ folder")
        jars = sorted(root.glob("*.jar")) + sorted(root.glob("jars/**/*.jar")) + sorted(root.glob("plugins/**/*.jar"))
    if not any(jar.name.startswith("ij") and jar.name[2:3] in ("", ".", "-") for jar in jars):
        default = next((Path(c) for c in (os.environ.get(ENV_IJ_JAR), DEBIAN_IJ_JAR) if c and Path(c).is_file()), None)
        if default is None:
            raise NUNetError(f"no ImageJ jar found: pass a Fiji.app folder, or set {ENV_IJ_JAR} to an ij.jar")
        jars.insert(0, default)
    return jars


def user_imagej_dir() -> Path:
    """The ImageJ folder :func:`start` uses when given none: ``$NUNET_IMAGEJ_DIR``, else
    ``$XDG_CACHE_HOME/nunet/imagej`` (``~/.cache/nunet/imagej``)."""
    if os.environ.get(ENV_IMAGEJ_DIR):
        return Path(os.environ[ENV_IMAGEJ_DIR])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nunet" / "imagej"


def _ensure_installed(root: Path) -> Path:
    """``root`` with this nunet's "NU-Net Filter" plugin installed (installed or refreshed when needed)."""
    import sys

    from nunet._version import __version__
    from nunet.integrations.fiji_install import PLUGIN_DIR, install

    config = root / PLUGIN_DIR / "nunet.properties"
    current = (
        config.is_file()
        and f"nunet_version={__version__}\n" in config.read_text(encoding="utf-8")
        and f"python={sys.executable}\n" in config.read_text(encoding="utf-8")
    )
    if not current:
        root.mkdir(parents=True, exist_ok=True)
        install(root)
    return root


def start(fiji_dir: str | os.PathLike | None = None, headless: bool | None = None) -> None:
    """Start a JVM with ImageJ, or reuse the running one (a pyimagej session's).

    Parameters
    ----------
    fiji_dir : path-like, optional
        A Fiji.app or ImageJ folder; its ``plugins/`` becomes ImageJ's plugins folder (the JVM
        option ``-Dplugins.dir``), so the installed "NU-Net Filter" command is found. Default: a
        per-user folder (:func:`user_imagej_dir`) where the plugin is installed on first use, with
        ``$NUNET_IJ_JAR`` or Debian's ij.jar.
    headless : bool, optional
        Default: headless when no display is available. ImageJ 1.53's ``run()`` needs a
        display (use Xvfb on servers); conversions and :func:`filter_imageplus` do not.
    """
    import scyjava

    if scyjava.jvm_started():
        return
    if headless is None:
        headless = not os.environ.get("DISPLAY")
    if fiji_dir is None:
        fiji_dir = _ensure_installed(user_imagej_dir())
    scyjava.config.set_java_constraints(fetch="never")
    for jar in classpath(fiji_dir):
        scyjava.config.add_classpath(str(jar))
    if fiji_dir is not None:
        scyjava.config.add_option(f"-Dplugins.dir={Path(fiji_dir).resolve()}")
    scyjava.config.add_option(f"-Djava.awt.headless={'true' if headless else 'false'}")
    scyjava.config.add_option("-Dpython.cachedir.skip=true")
    scyjava.start_jvm()
    atexit.register(_stop_imagej_threads)


def _stop_imagej_threads() -> None:
    """At exit, before Python finalises: close the in-process filter (macros still running get the
    plugin's clear error instead of a call into a finalising Python, or a worker started at exit),
    let the calls already inside it finish, then stop ImageJ's non-daemon thread pool (without it
    the process never exits)."""
    import scyjava

    if scyjava.jvm_started():
        if _registered:
            scyjava.jimport("java.lang.System").getProperties().put(INPROCESS_KEY, CLOSED)
            for proxy in _registered:
                proxy.wait_idle(DRAIN_S)
        scyjava.jimport("ij.util.ThreadUtil").threadPoolExecutor.shutdownNow()
    # the proxy's Python object stays referenced (in _registered) until the interpreter is gone


# ---- conversions ----------------------------------------------------------------------


def from_imageplus(imp: Any) -> Image:
    """An ImagePlus (8/16/32-bit, RGB, hyperstack) as an :class:`~nunet.io.Image`.

    Axes are ``TZCYX`` without the singleton ones, plus ``S`` for RGB; pixel values and
    calibration are kept exactly.
    """
    from jpype import JClass

    image_plus = JClass("ij.ImagePlus")
    width, height = int(imp.getWidth()), int(imp.getHeight())
    dims = (int(imp.getNFrames()), int(imp.getNSlices()), int(imp.getNChannels()))
    kind = int(imp.getType())
    stack = imp.getStack()
    planes = []
    for t in range(dims[0]):
        for z in range(dims[1]):
            for c in range(dims[2]):
                pixels = np.asarray(stack.getPixels(int(imp.getStackIndex(c + 1, z + 1, t + 1))))
                planes.append(pixels)
    data = np.stack(planes).reshape(dims + (height, width))
    if kind == image_plus.GRAY8:
        data = data.view(np.uint8)
    elif kind == image_plus.GRAY16:
        data = data.view(np.uint16)
    elif kind == image_plus.COLOR_RGB:
        packed = data.view(np.uint32)
        data = np.stack([(packed >> shift) & 0xFF for shift in (16, 8, 0)], axis=-1).astype(np.uint8)
    elif kind != image_plus.GRAY32:
        raise NUNetError(f"{imp.getTitle()}: unsupported ImagePlus type {kind}")
    keep = tuple(i for i, n in enumerate(dims) if n > 1)
    axes = "".join("TZC"[i] for i in keep) + "YX" + ("S" if kind == image_plus.COLOR_RGB else "")
    data = data.reshape(tuple(dims[i] for i in keep) + data.shape[3:])
    return Image(np.ascontiguousarray(data), axes, _calibration(imp.getCalibration()))


def _calibration(cal: Any) -> Calibration:
    unit = str(cal.getUnit())
    time_unit = str(cal.getTimeUnit())
    interval = float(cal.frameInterval) if cal.frameInterval else None
    return Calibration(
        float(cal.pixelWidth),
        float(cal.pixelHeight),
        None if unit in ("pixel", "pixels", "") else unit,
        float(cal.pixelDepth),
        interval,
        time_unit if interval is not None and time_unit else None,
    )


def to_imageplus(image: Image, title: str = "image") -> Any:
    """An :class:`~nunet.io.Image` (axes from TZCYXS) as a calibrated ImagePlus hyperstack."""
    from jpype import JArray, JByte, JClass, JFloat, JInt, JShort

    from nunet.io import check_axes, to_imagej_order

    data, axes = to_imagej_order(image.data, check_axes(image.axes, image.data.shape))
    rgb = "S" in axes
    for axis in "TZC":
        if axis not in axes:
            data, axes = data[np.newaxis], axis + axes
    data, axes = to_imagej_order(data, axes)
    frames, slices, channels, height, width = data.shape[:5]
    makers = {
        np.dtype(np.uint8): (JClass("ij.process.ByteProcessor"), JByte, np.int8),
        np.dtype(np.uint16): (JClass("ij.process.ShortProcessor"), JShort, np.int16),
        np.dtype(np.float32): (JClass("ij.process.FloatProcessor"), JFloat, np.float32),
    }
    if rgb:
        rgb8 = data[..., :3].astype(np.uint32)
        data = ((rgb8[..., 0] << 16) | (rgb8[..., 1] << 8) | rgb8[..., 2]).view(np.int32)
        processor, jtype, view = JClass("ij.process.ColorProcessor"), JInt, np.int32
    elif data.dtype in makers:
        processor, jtype, view = makers[data.dtype]
    else:
        data = data.astype(np.float32)
        processor, jtype, view = makers[np.dtype(np.float32)]
    stack = JClass("ij.ImageStack")(width, height)
    for plane in data.reshape((-1, height, width)):
        pixels = JArray(jtype)(np.ascontiguousarray(plane).view(view).ravel())
        if processor.__name__.endswith("ShortProcessor"):
            stack.addSlice(processor(width, height, pixels, None))
        else:
            stack.addSlice(processor(width, height, pixels))
    imp = JClass("ij.ImagePlus")(title, stack)
    imp.setDimensions(channels, slices, frames)
    if sum(n > 1 for n in (channels, slices, frames)) > 1 or channels > 1:
        imp.setOpenAsHyperStack(True)
    _set_calibration(imp, image.calibration)
    return imp


def _set_calibration(imp: Any, cal: Calibration) -> None:
    jcal = imp.getCalibration()
    jcal.pixelWidth, jcal.pixelHeight = cal.pixel_width, cal.pixel_height
    jcal.pixelDepth = cal.z_spacing if cal.z_spacing is not None else 1.0
    if cal.unit:
        jcal.setUnit(cal.unit)
    if cal.frame_interval is not None:
        jcal.frameInterval = cal.frame_interval
    if cal.time_unit:
        jcal.setTimeUnit(cal.time_unit)


# ---- filtering ------------------------------------------------------------------------


def filter_imageplus(
    imp: Any,
    model: str = DEFAULT_MODEL,
    *,
    w: float | None = None,
    channel: int | Sequence[int] | None = None,
    dtype: str = "float32",
    **options: Any,
) -> Any:
    """Filter an ImagePlus; return a new ImagePlus "NU-Net of <title>".

    Same frames, slices and calibration (time-lapses stay frames). ``channel`` is 0-based
    as in :func:`nunet.enhance`; other options (``tile_size``, ``device``...) as there.
    ``dtype``: float32 (display range 0..1), uint8 or uint16.
    """
    from nunet.api import filter_image
    from nunet.io import convert_dtype, with_data

    result = filter_image(from_imageplus(imp), model, w=w, channel=channel, **options)
    result = with_data(result, convert_dtype(result.data, dtype), result.axes)
    out = to_imageplus(result, f"NU-Net of {imp.getTitle()}")
    if dtype == "float32":
        out.setDisplayRange(0.0, 1.0)
    return out


def register() -> None:
    """Serve ``run("NU-Net Filter", ...)`` of this JVM with this Python process, in-process.

    The plugin finds the function under the system property ``nunet.filter`` and sends the
    selected planes (float arrays) with the dialog's options; no worker process is started.
    """
    import torch  # noqa: F401  imported now: an import inside a call that races the interpreter's exit fails
    from jpype import JArray, JClass, JFloat, JImplements, JOverride, JString

    from nunet.api import filter_planes_with, resolve_settings
    from nunet.io import Calibration
    from nunet.options import SETTING_NAMES, FilterSettings

    @JImplements("java.util.function.Function")
    class _Filter:
        def __init__(self) -> None:
            self.running = 0  # calls inside apply, on ImageJ's threads
            self.idle = threading.Condition()

        def wait_idle(self, timeout: float) -> bool:
            with self.idle:
                return self.idle.wait_for(lambda: self.running == 0, timeout)

        @JOverride
        def apply(self, request):
            with self.idle:
                self.running += 1
            try:
                return self._filter(request)
            except Exception as exc:  # answered as a message: a raised one reaches ImageJ as "PyExceptionProxy: None"
                return JString(" ".join(str(exc).split()) or type(exc).__name__)
            finally:
                with self.idle:
                    self.running -= 1
                    self.idle.notify_all()

        def _filter(self, request):
            planes = [np.asarray(p) for p in request.get("planes")]
            width, height = int(request.get("width")), int(request.get("height"))
            settings = resolve_settings(
                FilterSettings.from_text(  # Jython's True: 1
                    {key: str(request.get(key)) for key in SETTING_NAMES if request.get(key) is not None}
                )
            )
            stack = np.stack(planes).reshape((-1, height, width)).astype(np.float32)
            unit = request.get("unit")
            calibration = Calibration(
                float(request.get("pixel_width") or 1.0), unit=None if unit is None else str(unit)
            )
            result = JClass("java.util.ArrayList")()
            for plane in filter_planes_with(stack, settings, calibration):
                result.add(JArray(JFloat)(np.ascontiguousarray(plane).ravel()))
            return result

    proxy = _Filter()
    _registered[:] = [proxy]
    JClass("java.lang.System").getProperties().put(INPROCESS_KEY, proxy)


def unregister() -> None:
    """Stop serving "NU-Net Filter" in-process (the plugin falls back to the worker)."""
    from jpype import JClass

    JClass("java.lang.System").getProperties().remove(INPROCESS_KEY)
    _registered.clear()


def run_macro(code: str, arg: str = "") -> str | None:
    """Run ImageJ macro code in this JVM (batch mode images become the current image).

    A macro error (an image not found, a bad argument) raises instead of opening ImageJ's modal
    error dialog, which would wait for a click that a script never gives.

    Raises
    ------
    NUNetError
        Before running, when this JVM has no display (ImageJ 1's commands need one), or the code
        calls ``run("NU-Net Filter")`` and this ImageJ has no such command; after, with ImageJ's
        message, when the macro stopped on an error, or with the command's own message when
        "NU-Net Filter" failed (an unknown model, a bad option).
    """
    from jpype import JClass, JException

    commands = JClass("ij.Menus").getCommands()
    if commands is None and JClass("java.awt.GraphicsEnvironment").isHeadless():
        raise NUNetError(
            "ImageJ macros need a display here (ImageJ 1 builds its commands only with one): run Python "
            "under 'xvfb-run -a' on a server, or with DISPLAY set"
        )
    if "NU-Net Filter" in code and (commands is None or commands.get("NU-Net Filter") is None):
        raise NUNetError(
            'this ImageJ has no "NU-Net Filter" command: start it with fiji.start() (it installs '
            "the plugin in a per-user folder) or fiji.start(FOLDER) after 'nunet fiji install FOLDER'"
        )
    interpreter = JClass("ij.macro.Interpreter")()
    interpreter.setIgnoreErrors(True)
    properties = JClass("java.lang.System").getProperties()
    properties.remove(ERROR_KEY)
    try:
        result = interpreter.run(code, arg)
    except JException as exc:  # a command stopped the macro (Interpreter.abort)
        if "Macro canceled" not in str(exc):
            raise
        result = None
    failure = properties.get(ERROR_KEY)
    if failure is not None:  # "NU-Net Filter" failed: it logged why and stopped the macro
        raise NUNetError(f"ImageJ macro stopped: {failure}")
    message = interpreter.getErrorMessage()  # set, and the macro stopped, on an error
    if message is not None:
        raise NUNetError(f"ImageJ macro error: {' '.join(str(message).split())}")
    return None if result is None else str(result)
