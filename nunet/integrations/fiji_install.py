"""Installing the "NU-Net Filter" command into a Fiji.app or a plain ImageJ folder.

What ``install`` writes (and ``uninstall`` removes), relative to the Fiji/ImageJ folder:

- ``plugins/NU-Net/NU-Net_Filter.py``: the command (menu Plugins > NU-Net > NU-Net Filter), and
  ``nunetplugin.py``, its body (a module, so Jython compiles it once per session);
- ``plugins/NU-Net/nunet.properties``: the Python that runs the worker (``python -m nunet serve``);
- ``macros/NU-Net/``: the example macros and scripts;
- in a plain ImageJ 1 only (no Fiji script runner): ``plugins/jars/nunet-jython-shim.jar``, the small
  ``Jython`` class ImageJ 1 needs to run .py plugins, compiled here with ``javac``, and a copy of
  ``jython.jar``.

The list of written files is kept in ``plugins/NU-Net/installed.txt`` for ``uninstall``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from nunet._version import __version__
from nunet.errors import NUNetError
from nunet.options import DEFAULT_MODEL

#: The "NU-Net Filter" macro options, in ImageJ's vocabulary, and the setting each one sets (channels are
#: 1-based there; output is 32-bit/16-bit/8-bit; replace is the plugin's own: replace the current image).
#: ``nunet fiji install`` writes this map into nunet.properties (``macro_map``): the plugin reads it there.
MACRO_OPTIONS = {
    "model": "model",
    "w": "w",
    "channels": "channel",
    "tile": "tile_size",
    "device": "device",
    "output": "dtype",
    "replace": None,
    "invert": "invert",
    "augment": "augment",
    "radius": "radius",
}


PLUGIN_DIR = Path("plugins") / "NU-Net"
MANIFEST = PLUGIN_DIR / "installed.txt"
DEFAULT_JYTHON_JAR = Path("/usr/share/java/jython.jar")


def resource_dir(package: str) -> Path:
    """A folder of files nunet installs: the package data of ``nunet.integrations.<package>``
    (``fiji_plugin``: the repository's fiji/; ``macros``: its macros/), in a source tree or a wheel."""
    from importlib import resources

    folder = resources.files(f"nunet.integrations.{package}")
    if not isinstance(folder, Path) or not folder.is_dir():
        raise NUNetError(f"nunet's {package} files are missing from this installation (or not on a file system)")
    return folder


def is_fiji(root: Path) -> bool:
    """True for a Fiji.app (it ships its own Jython script runner)."""
    jars = root / "jars"
    return any(jars.glob("jython*.jar")) or any(jars.glob("scijava-common*.jar"))


def install(root: Path, python: str = sys.executable, jython_jar: Path = DEFAULT_JYTHON_JAR) -> list[Path]:
    """Install the plugin, its configuration and the examples into ``root``; return the files written.

    Raises
    ------
    NUNetError
        If ``root`` is not a folder (a missing one is created when its parent exists), or a plain
        ImageJ lacks what the Jython shim needs.
    """
    root = Path(root)
    if not root.exists() and root.parent.is_dir():
        root.mkdir()  # a new ImageJ folder (its parent must exist: a mistyped path is not created)
    if not root.is_dir():
        raise NUNetError(f"{root}: not a folder (give the Fiji.app or ImageJ folder)")
    written: list[Path] = []
    for plugin_file in sorted((resource_dir("fiji_plugin") / "plugins" / "NU-Net").glob("*.py")):
        written.append(_copy(plugin_file, root / PLUGIN_DIR / plugin_file.name))
    config = root / PLUGIN_DIR / "nunet.properties"
    macro_map = ",".join(f"{key}:{setting or ''}" for key, setting in MACRO_OPTIONS.items())
    config.write_text(
        "# written by 'nunet fiji install'\n"
        f"python={python}\n"
        f"nunet_version={__version__}\n"
        f"default_model={DEFAULT_MODEL}\n"
        f"macro_map={macro_map}\n"
        f"installed={datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
        "# seconds: worker start-up, and one filter call\n"
        "startup_timeout=300\ntimeout=3600\n",
        encoding="utf-8",
    )
    written.append(config)
    for example in sorted(resource_dir("macros").iterdir()):
        if example.suffix in (".ijm", ".py") and not example.name.startswith("__"):
            written.append(_copy(example, root / "macros" / "NU-Net" / example.name))
    if not is_fiji(root):
        written += _install_jython_shim(root, Path(jython_jar))
    manifest = root / MANIFEST
    manifest.write_text("".join(f"{p.relative_to(root)}\n" for p in written + [manifest]), encoding="utf-8")
    return written


def uninstall(root: Path) -> list[Path]:
    """Remove what :func:`install` wrote (per its manifest); return the removed files."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise NUNetError(f"{root}: NU-Net is not installed here (no {MANIFEST})")
    removed = []
    for line in manifest.read_text(encoding="utf-8").splitlines():
        path = root / line.strip()
        if line.strip() and path.is_file():
            path.unlink()
            removed.append(path)
    for folder in (root / PLUGIN_DIR, root / "macros" / "NU-Net"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def _install_jython_shim(root: Path, jython_jar: Path) -> list[Path]:
    """Compile the ``Jython`` plugin class against the ImageJ jar and jython.jar; install both."""
    ij_jar = next((p for p in (root / "ij.jar", Path("/usr/share/java/ij.jar")) if p.is_file()), None)
    if ij_jar is None or not jython_jar.is_file() or shutil.which("javac") is None:
        raise NUNetError(
            f"{root} is a plain ImageJ: running the .py plugin needs Jython there. Needed: ij.jar, "
            f"{jython_jar} (--jython-jar) and javac (a JDK); or install into a Fiji.app"
        )
    jars = root / "plugins" / "jars"
    jars.mkdir(parents=True, exist_ok=True)
    source = resource_dir("fiji_plugin") / "imagej1" / "Jython.java"
    with tempfile.TemporaryDirectory() as build:
        classpath = f"{ij_jar}:{jython_jar}"
        for command in (
            ["javac", "--release", "8", "-cp", classpath, "-d", build, str(source)],
            ["jar", "cf", str(jars / "nunet-jython-shim.jar"), "-C", build, "Jython.class"],
        ):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise NUNetError(f"cannot build the ImageJ 1 Jython shim: {done.stderr.strip().splitlines()[-1:]}")
    return [jars / "nunet-jython-shim.jar", _copy(jython_jar.resolve(), jars / "jython.jar")]
