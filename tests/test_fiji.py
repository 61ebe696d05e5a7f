"""The Fiji bridge against a real ImageJ 1 (Debian's ij.jar) under a virtual display.

In-process tests drive ImageJ from this Python process (as a pyimagej session would);
standalone tests run separate `java -jar ij.jar -batch` processes, with no Python in their
JVM, on an ImageJ folder prepared by `nunet fiji install`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import blobs
from nunet import enhance
from nunet.errors import NUNetError
from nunet.io import Calibration, Image, read_image, write_image

IJ_JAR = Path(os.environ.get("NUNET_IJ_JAR", "/usr/share/java/ij.jar"))
REPO = Path(__file__).resolve().parent.parent
CAL = Calibration(0.65, 0.65, "micron", 2.0, 30.0, "sec")

if not IJ_JAR.is_file() or shutil.which("Xvfb") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs ImageJ and Xvfb: .ci/run installs libij-java, jython and xvfb")
    pytest.skip("ImageJ (libij-java) or Xvfb not installed", allow_module_level=True)

pytestmark = pytest.mark.fiji


@pytest.fixture(scope="session")
def display():
    """A private Xvfb display: ImageJ 1.53's run() and GenericDialog need one."""
    read, write = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-nolisten", "tcp", "-screen", "0", "1280x1024x24"],
        pass_fds=[write],
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    number = b""
    while not number.endswith(b"\n"):
        number += os.read(read, 1)
    os.close(read)
    # Stopped at interpreter exit, after the JVM: an X server gone under a live AWT ends the process.
    atexit.register(server.terminate)
    return f":{number.decode().strip()}"


@pytest.fixture(scope="session")
def imagej_dir(tmp_path_factory, model_dir) -> Path:
    """A plain ImageJ folder with the plugin installed by the real `nunet fiji install` command."""
    root = tmp_path_factory.mktemp("ImageJ")
    done = subprocess.run(
        [Path(sys.executable).parent / "nunet", "fiji", "install", root], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture(scope="session")
def jvm(display, imagej_dir):
    """This process's JVM with ImageJ and the installed plugin (started once per session)."""
    from nunet import fiji

    os.environ["DISPLAY"] = display
    fiji.start(imagej_dir)
    from jpype import JClass

    JClass("ij.macro.Interpreter").batchMode = True
    return JClass


def run_imagej(
    display: str, imagej_dir: Path, macro: Path | str, arg: str, tmp: Path, model_dir: Path, timeout: float = 180
) -> subprocess.CompletedProcess:
    """A standalone ImageJ running a macro file in batch mode (no Python inside its JVM)."""
    env = {**os.environ, "DISPLAY": display, "NUNET_MODEL_PATH": str(model_dir)}
    command = [
        "java",
        f"-Dplugins.dir={imagej_dir}",
        "-Dpython.cachedir.skip=true",
        f"-Djava.io.tmpdir={tmp}",
        "-jar",
        str(IJ_JAR),
        "-batch",
        str(macro),
        arg,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def assert_calibrated(cal: Calibration) -> None:
    """A TIFF saved by ImageJ keeps CAL (pixel sizes go through TIFF rationals; "sec" is ImageJ's default)."""
    assert (cal.pixel_width, cal.pixel_height) == pytest.approx((CAL.pixel_width, CAL.pixel_height), rel=1e-5)
    assert (cal.unit, cal.z_spacing, cal.frame_interval) == (CAL.unit, CAL.z_spacing, CAL.frame_interval)


def write_macro(tmp: Path, code: str) -> Path:
    path = tmp / "test.ijm"
    path.write_text(code)
    return path


# ---- conversions and the Python API ------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, axes, shape",
    [
        (np.uint8, "YX", (20, 24)),
        (np.uint16, "TZCYX", (2, 3, 2, 20, 24)),
        (np.float32, "ZYX", (4, 20, 24)),
        (np.uint8, "TYXS", (2, 20, 24, 3)),
    ],
)
def test_imageplus_round_trip(jvm, dtype, axes, shape):
    from nunet import fiji

    rng = np.random.default_rng(0)
    data = (rng.random(shape) * (255 if dtype == np.uint8 else 60000)).astype(dtype)
    imp = fiji.to_imageplus(Image(data, axes, CAL), "round trip")
    assert (imp.getNFrames(), imp.getNSlices(), imp.getNChannels()) == tuple(
        shape[axes.index(a)] if a in axes else 1 for a in "TZC"
    )
    back = fiji.from_imageplus(imp)
    assert back.axes == axes and back.data.dtype == dtype
    np.testing.assert_array_equal(back.data, data)
    assert back.calibration == CAL


def test_filter_imageplus_keeps_frames_and_calibration(jvm):
    from nunet import fiji

    data = blobs((3, 2, 32, 36)).astype(np.uint16)
    imp = fiji.to_imageplus(Image(data, "TZYX", CAL), "cells")
    out = fiji.filter_imageplus(imp, "nunet-test")
    assert str(out.getTitle()) == "NU-Net of cells"
    assert (out.getNFrames(), out.getNSlices(), out.getNChannels()) == (3, 2, 1)
    result = fiji.from_imageplus(out)
    assert result.calibration == CAL and result.axes == "TZYX"
    np.testing.assert_allclose(result.data, enhance(data, "nunet-test", axes="TZYX"), atol=1e-6)


def test_inprocess_macro_equals_enhance(jvm):
    from nunet import fiji

    data = blobs((2, 2, 40, 44)).astype(np.float32)
    imp = fiji.to_imageplus(Image(data, "TCYX", CAL), "two channels")
    fiji.register()
    try:
        imp.show()
        fiji.run_macro(
            'run("NU-Net Filter", "model=nunet-test w=0 channels=2 tile=0 device=auto output=32-bit radius=auto");'
        )
        result = jvm("ij.WindowManager").getCurrentImage()
        assert str(result.getTitle()) == "NU-Net of two channels"
        out = fiji.from_imageplus(result)
    finally:
        fiji.unregister()
        close_all(jvm)
    assert out.axes == "TYX" and out.calibration == CAL
    expected = enhance(data, "nunet-test", axes="TCYX", channel=1)
    assert np.abs(out.data - expected).max() <= 1e-4


def test_macro_radius_in_microns_uses_the_images_calibration(jvm):
    """``radius=10um`` on an image of 0.5 micron pixels filters as ``radius=20`` (pixels) does."""
    from scipy import ndimage as ndi

    from nunet import fiji
    from nunet.data.synth import synth_image
    from nunet.io import Calibration

    data = ndi.zoom(synth_image("sparse", (48, 48), seed=5).image, 3.0, order=1).astype(np.float32)
    imp = fiji.to_imageplus(Image(data, "YX", Calibration(0.5, 0.5, "micron")), "big nuclei")
    out = run_inprocess(jvm, imp, 'run("NU-Net Filter", "model=nunet-test channels=all output=32-bit radius=10um");')
    expected = enhance(data, "nunet-test", radius=20)
    assert np.abs(out.data - expected).max() <= 1e-4
    assert np.abs(out.data - enhance(data, "nunet-test", radius="off")).max() > 0.05


def test_inprocess_errors_reach_imagej_as_one_clear_line(jvm):
    """A Python error inside the in-process filter (here an unknown model) reaches ImageJ's Log as the
    plugin's one line with nunet's message, and stops the macro, instead of "PyExceptionProxy: None"."""
    from nunet import fiji

    imp = fiji.to_imageplus(Image(blobs((40, 44)).astype(np.float32), "YX"), "cells")
    fiji.register()
    try:
        imp.show()
        with pytest.raises(NUNetError, match="ImageJ macro stopped: NU-Net Filter: .*no-such-model") as raised:
            fiji.run_macro(
                'run("NU-Net Filter", "model=no-such-model w=0 channels=all tile=0 device=auto output=32-bit radius=auto"); '
                'call("java.lang.System.setProperty", "test.after", "ran");'
            )
    finally:
        fiji.unregister()
        close_all(jvm)
    assert "PyExceptionProxy" not in str(raised.value)
    assert jvm("java.lang.System").getProperty("test.after") is None  # the macro stopped


def test_replace_and_integer_output(jvm):
    from nunet import fiji
    from nunet.io import convert_dtype

    data = blobs((2, 36, 40)).astype(np.uint16)
    imp = fiji.to_imageplus(Image(data, "TYX", CAL), "in place")
    fiji.register()
    try:
        imp.show()
        before = jvm("ij.WindowManager").getImageCount()
        fiji.run_macro('run("NU-Net Filter", "model=nunet-test output=8-bit replace");')
        out = fiji.from_imageplus(imp)
        assert jvm("ij.WindowManager").getImageCount() == before  # no new image
    finally:
        fiji.unregister()
        close_all(jvm)
    assert out.data.dtype == np.uint8 and out.axes == "TYX" and out.calibration == CAL
    expected = convert_dtype(enhance(data, "nunet-test", axes="TYX"), "uint8")
    assert np.abs(out.data.astype(int) - expected).max() <= 1


def test_invert_and_augment_flags_inprocess(jvm):
    from nunet import fiji

    data = blobs((40, 44)).astype(np.float32)
    imp = fiji.to_imageplus(Image(data, "YX", CAL), "dark nuclei")
    out = run_inprocess(jvm, imp, 'run("NU-Net Filter", "model=nunet-test invert augment");')
    expected = enhance(data, "nunet-test", invert=True, augment=True)
    assert np.abs(out.data - expected).max() <= 1e-4
    assert np.abs(out.data - enhance(data, "nunet-test", invert=True)).max() > 1e-3


def test_recorder_writes_documented_syntax(jvm, display):
    """Pressing OK in the dialog records run("NU-Net Filter", "...") exactly as the docs say."""
    from jpype import JClass, JProxy

    from nunet import fiji

    interpreter = jvm("ij.macro.Interpreter")
    interpreter.batchMode = False
    fiji.register()
    recorder = JClass("ij.plugin.frame.Recorder")()
    try:
        imp = fiji.to_imageplus(Image(blobs((32, 32)).astype(np.float32), "YX"), "recorded")
        imp.show()
        jvm("ij.IJ").doCommand("NU-Net Filter")
        dialog = _wait_for(
            lambda: next(
                (
                    w
                    for w in JClass("java.awt.Window").getWindows()
                    if w.isVisible()
                    and str(w.getClass().getName()) == "ij.gui.GenericDialog"
                    and str(w.getTitle()) == "NU-Net Filter"
                ),
                None,
            )
        )
        ok = dialog.getButtons()[0]

        def press_ok() -> None:  # AWT components are only touched on the event thread (else: deadlocks)
            dialog.getStringFields().get(0).setText("nunet-test")
            dialog.actionPerformed(JClass("java.awt.event.ActionEvent")(ok, 1001, "OK"))

        JClass("java.awt.EventQueue").invokeAndWait(JProxy("java.lang.Runnable", dict(run=press_ok)))
        text = _wait_for(lambda: "NU-Net Filter" in str(recorder.getText()) and str(recorder.getText()))
    finally:
        recorder.close()
        fiji.unregister()
        close_all(jvm)
        interpreter.batchMode = True
    assert (
        'run("NU-Net Filter", "model=nunet-test w=0 channels=all tile=0 device=auto output=32-bit radius=auto");'
        in text
    )


def run_inprocess(jvm, imp, macro: str) -> Image:
    """Show ``imp``, run ``macro`` served in-process by this Python, and read back the image it made."""
    from nunet import fiji

    fiji.register()
    try:
        imp.show()
        fiji.run_macro(macro)
        return fiji.from_imageplus(jvm("ij.WindowManager").getCurrentImage())
    finally:
        fiji.unregister()
        close_all(jvm)


def close_all(jvm) -> None:
    """Close batch-mode images and windows between tests."""
    from nunet import fiji

    fiji.run_macro('close("*");')
    jvm("ij.WindowManager").closeAllWindows()


def _wait_for(probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for ImageJ")


# ---- standalone ImageJ with the worker -----------------------------------------------------


@pytest.mark.slow
def test_standalone_pipeline_macro_equals_enhance(display, imagej_dir, model_dir, tmp_path):
    source = tmp_path / "cells.tif"
    data = blobs((3, 48, 52)).astype(np.uint16)
    write_image(Image(data, "TYX", CAL), source)
    output = tmp_path / "cells_nunet.tif"
    macro = imagej_dir / "macros" / "NU-Net" / "nunet_pipeline.ijm"
    done = run_imagej(
        display, imagej_dir, macro, f"input=[{source}] output=[{output}] model=nunet-test", tmp_path, model_dir
    )
    assert "nuclei: " in done.stdout, done.stdout + done.stderr
    result = read_image(output)
    assert result.axes == "TYX"
    assert_calibrated(result.calibration)
    assert np.abs(result.data - enhance(data, "nunet-test", axes="TYX")).max() <= 1e-4


@pytest.mark.slow
def test_batch_macro_of_ten_images_starts_one_worker(display, imagej_dir, model_dir, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i in range(10):
        write_image(Image(blobs((40, 40), seed=i).astype(np.uint16), "YX"), inputs / f"img{i:02d}.tif")
    macro = imagej_dir / "macros" / "NU-Net" / "nunet_batch.ijm"
    done = run_imagej(
        display, imagej_dir, macro, f"input=[{inputs}] output=[{outputs}] model=nunet-test", tmp_path, model_dir
    )
    assert "filtered 10 images" in done.stdout, done.stdout + done.stderr
    assert len(list(outputs.glob("*.tif"))) == 10
    log = (tmp_path / "nunet-worker.log").read_text()
    assert log.count(" started, pid ") == 1  # one worker for the ten images (it logs its stop too)
    expected = enhance(read_image(inputs / "img07.tif"), "nunet-test")
    assert np.abs(read_image(outputs / "img07.tif").data - expected).max() <= 1e-4


@pytest.mark.slow
def test_jython_scripts(display, imagej_dir, model_dir, tmp_path):
    """The Jython batch script and the TrackMate preprocessing script, up to TrackMate's hand-off."""
    scripts = imagej_dir / "macros" / "NU-Net"
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    stack = blobs((4, 2, 32, 36)).astype(np.uint16)
    write_image(Image(stack, "TZYX", CAL), inputs / "timelapse.tif")
    saved = tmp_path / "filtered.tif"
    code = f"""
eval("python", "input_dir = '{inputs}'\\noutput_dir = '{outputs}'\\nmodel = 'nunet-test'\\nexecfile('{scripts / "nunet_batch.py"}')");
setBatchMode(true);
open("{inputs / "timelapse.tif"}");
eval("python", "from ij import IJ\\nimp = IJ.getImage()\\nmodel = 'nunet-test'\\nradius = 2.5\\nthreshold = 0.1\\nexecfile('{scripts / "trackmate_nunet.py"}')");
selectImage("NU-Net of timelapse.tif");
saveAs("Tiff", "{saved}");
"""
    done = run_imagej(display, imagej_dir, write_macro(tmp_path, code), "", tmp_path, model_dir)
    out = done.stdout + done.stderr
    assert "filtered 1 images" in out and "TrackMate is not installed" in out, out
    assert "4 frames x 2 slices x 1 channels" in out
    result = read_image(saved)
    assert result.axes == "TZYX"
    assert_calibrated(result.calibration)
    expected = enhance(stack, "nunet-test", axes="TZYX")
    assert np.abs(result.data - expected).max() <= 1e-4
    assert np.abs(read_image(outputs / "timelapse.tif").data - expected).max() <= 1e-4


def test_invert_and_augment_flags_through_the_worker(display, imagej_dir, model_dir, tmp_path):
    source, saved = tmp_path / "dark.tif", tmp_path / "dark_nunet.tif"
    data = blobs((40, 44)).astype(np.uint16)
    write_image(Image(data, "YX", CAL), source)
    code = (
        f'setBatchMode(true); open("{source}"); run("NU-Net Filter", "model=nunet-test invert augment");\n'
        f'saveAs("Tiff", "{saved}");\n'
    )
    done = run_imagej(display, imagej_dir, write_macro(tmp_path, code), "", tmp_path, model_dir)
    assert saved.is_file(), done.stdout + done.stderr
    expected = enhance(data, "nunet-test", invert=True, augment=True)
    assert np.abs(read_image(saved).data - expected).max() <= 1e-4


@pytest.mark.parametrize(
    "code, message",
    [
        ('run("NU-Net Filter", "model=nunet-test");', "NU-Net Filter: no image open"),
        (
            'newImage("a", "32-bit ramp", 32, 32, 1); run("NU-Net Filter", "model=nunet-test modle=x");',
            "NU-Net Filter: unknown option 'modle'",
        ),
        (
            'newImage("a", "32-bit ramp", 32, 32, 1); run("NU-Net Filter", "model=nunet-test channels=3");',
            "NU-Net Filter: channel 3 out of range",
        ),
        (
            'newImage("a", "32-bit ramp", 32, 32, 1); run("NU-Net Filter", "model=no-such-model");',
            "NU-Net Filter: unknown model 'no-such-model'; available:",
        ),
    ],
)
def test_macro_errors_are_clear_and_stop_the_macro(display, imagej_dir, model_dir, tmp_path, code, message):
    macro = write_macro(tmp_path, "setBatchMode(true);\n" + code + '\nprint("macro went on");\n')
    done = run_imagej(display, imagej_dir, macro, "", tmp_path, model_dir, timeout=120)
    assert message in done.stdout + done.stderr
    assert "macro went on" not in done.stdout


def test_worker_that_cannot_start(display, model_dir, tmp_path):
    root = tmp_path / "ImageJ"
    root.mkdir()
    from nunet.integrations.fiji_install import install

    install(root, python=str(tmp_path / "no-python-here"))
    macro = write_macro(
        tmp_path,
        'setBatchMode(true); newImage("a", "32-bit ramp", 32, 32, 1);\n'
        'run("NU-Net Filter", "model=nunet-test");\nprint("macro went on");\n',
    )
    done = run_imagej(display, root, macro, "", tmp_path, model_dir, timeout=120)
    assert "NU-Net Filter: cannot start the NU-Net worker with" in done.stdout
    assert "macro went on" not in done.stdout


@pytest.mark.slow
def test_killed_worker_is_a_clear_error(display, model_dir, tmp_path):
    """A worker killed in the middle of a call: the macro stops with a message, nothing hangs."""
    root = tmp_path / "ImageJ"
    root.mkdir()
    pidfile = tmp_path / "worker.pid"
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho $$ > {pidfile}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    from nunet.integrations.fiji_install import install

    install(root, python=str(wrapper))
    macro = write_macro(
        tmp_path,
        'setBatchMode(true); newImage("big", "32-bit random", 512, 512, 60);\n'
        'run("NU-Net Filter", "model=nunet-test");\nprint("macro went on");\n',
    )
    env = {**os.environ, "DISPLAY": display, "NUNET_MODEL_PATH": str(model_dir)}
    java = subprocess.Popen(
        [
            "java",
            f"-Dplugins.dir={root}",
            "-Dpython.cachedir.skip=true",
            f"-Djava.io.tmpdir={tmp_path}",
            "-jar",
            str(IJ_JAR),
            "-batch",
            str(macro),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        _wait_for(lambda: pidfile.is_file() and pidfile.read_text().strip(), timeout=60)
        _wait_for(
            lambda: (
                "started" in (tmp_path / "nunet-worker.log").read_text()
                if (tmp_path / "nunet-worker.log").is_file()
                else False
            ),
            timeout=60,
        )
        time.sleep(2.0)  # the 60-plane request is now being filtered
        os.kill(int(pidfile.read_text()), 9)
        output, _ = java.communicate(timeout=60)
    finally:
        java.kill()
    assert "NU-Net Filter: the NU-Net worker stopped" in output
    assert "macro went on" not in output


def test_install_and_uninstall(tmp_path):
    root = tmp_path / "Fiji.app"
    (root / "jars").mkdir(parents=True)
    (root / "jars" / "jython-slim-2.7.3.jar").write_bytes(b"")  # a Fiji: no ImageJ 1 shim needed
    bindir = Path(sys.executable).parent
    done = subprocess.run([bindir / "nunet", "fiji", "install", root], capture_output=True, text=True, check=True)
    assert "NU-Net_Filter.py" in done.stdout
    assert (root / "plugins" / "NU-Net" / "NU-Net_Filter.py").is_file()
    assert f"python={sys.executable}" in (root / "plugins" / "NU-Net" / "nunet.properties").read_text()
    assert (root / "macros" / "NU-Net" / "nunet_pipeline.ijm").is_file()
    assert not (root / "plugins" / "jars" / "nunet-jython-shim.jar").exists()
    subprocess.run([bindir / "nunet", "fiji", "uninstall", root], capture_output=True, text=True, check=True)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "jars",
        "jars/jython-slim-2.7.3.jar",
        "macros",
        "plugins",
    ]


def test_install_creates_a_new_folder_but_not_a_mistyped_path(tmp_path):
    bindir = Path(sys.executable).parent
    new = tmp_path / "my-imagej"
    done = subprocess.run([bindir / "nunet", "fiji", "install", new], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (new / "plugins" / "NU-Net" / "NU-Net_Filter.py").is_file()
    typo = tmp_path / "no-such-parent" / "ImageJ"
    done = subprocess.run([bindir / "nunet", "fiji", "install", typo], capture_output=True, text=True)
    assert done.returncode == 2 and "not a folder" in done.stderr and not typo.parent.exists()


def test_documented_snippet_starts_without_a_folder_and_macro_errors_raise(display, model_dir, tmp_path):
    """README's pyimagej/scyjava snippet as written: fiji.start() with no folder installs the plugin in a
    per-user folder, run("NU-Net Filter") is served in-process, and a macro error raises at once instead
    of waiting on ImageJ's modal dialog (a real JVM in a fresh process)."""
    script = (
        "import numpy as np\n"
        "from nunet import fiji\n"
        "from nunet.errors import NUNetError\n"
        "from nunet.io import Image\n"
        "fiji.start()\n"
        "imp = fiji.to_imageplus(Image((np.arange(40 * 44).reshape(40, 44) % 97).astype(np.float32), 'YX'), 'cells')\n"
        "fiji.register()\n"
        "imp.show()\n"
        'fiji.run_macro(\'run("NU-Net Filter", '  # one macro line, split for width
        '"model=nunet-test w=0 channels=all tile=0 device=auto output=32-bit radius=auto");\')\n'
        "from jpype import JClass\n"
        "print('title:', JClass('ij.WindowManager').getCurrentImage().getTitle())\n"
        "try:\n"
        "    fiji.run_macro('selectImage(\"not-open\");')\n"
        "except NUNetError as exc:\n"
        "    print('error:', exc)\n"
    )
    env = {**os.environ, "DISPLAY": display, "NUNET_MODEL_PATH": str(model_dir), "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("NUNET_IMAGEJ_DIR", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "title: NU-Net of cells" in done.stdout
    assert "error: ImageJ macro error: not-open not found" in done.stdout
    assert (tmp_path / "nunet" / "imagej" / "plugins" / "NU-Net" / "NU-Net_Filter.py").is_file()


def test_session_ending_while_a_macro_filters_in_process(display, model_dir, tmp_path):
    """A Python session that serves "NU-Net Filter" in-process ends while an ImageJ macro thread is still
    calling it: the process exits promptly with code 0, the call under way finishes, later calls fail with
    the plugin's clear message (no Python exception text, no worker started at exit, no JVM crash)."""
    script = (
        "import time\n"
        "import numpy as np\n"
        "from jpype import JClass\n"
        "from nunet import fiji\n"
        "from nunet.io import Image\n"
        "fiji.start()\n"
        "fiji.register()\n"
        "fiji.to_imageplus(Image(np.ones((48, 40), np.float32), 'YX'), 'cells').show()\n"
        "JClass('ij.macro.MacroRunner')('for (i = 0; i < 400; i++) { selectImage(\"cells\"); "
        'run("NU-Net Filter", "model=nunet-test w=0 channels=all tile=0 device=cpu output=32-bit"); '
        'close(); print("filtered " + i); call("java.lang.System.setProperty", "test.filtered", "" + i); }\')\n'
        "start = time.time()\n"
        "while int(str(JClass('java.lang.System').getProperty('test.filtered') or -1)) < 2 and time.time() - start < 60:\n"
        "    time.sleep(0.01)\n"
        "print('exiting', flush=True)\n"
    )
    env = {
        **os.environ,
        "DISPLAY": display,
        "NUNET_MODEL_PATH": str(model_dir),
        "XDG_CACHE_HOME": str(tmp_path),
        "JAVA_TOOL_OPTIONS": f"-Djava.io.tmpdir={tmp_path}",  # where a worker would write its log
    }
    env.pop("NUNET_IMAGEJ_DIR", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "exiting" in done.stdout
    assert "PyExceptionProxy" not in output and "Traceback" not in output and "hs_err" not in output
    assert not (tmp_path / "nunet-worker.log").exists()  # no worker started while the session ended
    assert "has ended" in output or "filtered 399" in output  # and it ended: the subprocess timeout bounds it


def test_run_macro_without_a_display_says_so(model_dir, tmp_path):
    """No DISPLAY: ImageJ 1 builds no commands, and run_macro says a display is needed (xvfb-run), not that
    the command is missing."""
    script = (
        "from nunet import fiji\n"
        "from nunet.errors import NUNetError\n"
        "fiji.start()\n"
        "try:\n"
        '    fiji.run_macro(\'run("NU-Net Filter", "model=nunet-test");\')\n'
        "except NUNetError as exc:\n"
        "    print('error:', exc)\n"
    )
    env = {**os.environ, "NUNET_MODEL_PATH": str(model_dir), "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("DISPLAY", None)
    env.pop("NUNET_IMAGEJ_DIR", None)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    assert "error: ImageJ macros need a display here" in done.stdout and "xvfb-run" in done.stdout
