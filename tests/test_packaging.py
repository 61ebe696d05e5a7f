"""What a wheel of nunet carries: every package, the Fiji plugin and macros as package data, the
manifest, the default family and the backbone, and nothing over PyPI's limits."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _configured_packages() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_of_the_source_tree_is_configured():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "nunet").rglob("__init__.py")}
    mapped = {"nunet.integrations.fiji_plugin", "nunet.integrations.macros", "nunet.integrations.sample_images"}
    assert found | mapped == _configured_packages()


def test_public_faces_keep_their_names():
    import nunet
    import nunet.cluster
    import nunet.fiji
    from nunet.batch import cluster
    from nunet.integrations import fiji

    assert nunet.cluster.filter_zarr is cluster.filter_zarr and nunet.cluster.filter_dask is cluster.filter_dask
    assert nunet.fiji.filter_imageplus is fiji.filter_imageplus and nunet.fiji.run_macro is fiji.run_macro
    for name in ("enhance", "filter_image", "load_model", "read_image", "write_image", "list_models"):
        assert callable(getattr(nunet, name))


@pytest.mark.slow
def test_the_wheel_is_small_and_carries_the_plugin_macros_manifest_and_default_family(tmp_path):
    import shutil

    source = tmp_path / "source"  # a clean copy: setuptools' build/ folder keeps files of earlier builds
    skip = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "out", "tests", "docs")
    shutil.copytree(ROOT, source, ignore=skip)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, source],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("nunet_filter-*.whl")
    assert wheel.stat().st_size < 50e6
    names = zipfile.ZipFile(wheel).namelist()
    assert "nunet/integrations/fiji_plugin/plugins/NU-Net/nunetplugin.py" in names
    assert "nunet/integrations/macros/nunet_pipeline.ijm" in names
    assert "nunet/registry/manifest.json" in names and "nunet/data/dsb_split.json" in names
    models = sorted(Path(n).name for n in names if n.endswith(".pt"))
    families = ("nunet-fast", "nunet-v10", "nunet-v11")
    shipped = [f"{family}{member}.pt" for family in families for member in ("-w0.5", "-w0.75", "")]
    assert models == ["nuclei-vgg.pt", *shipped]
