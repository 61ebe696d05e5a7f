"""Models downloaded on request: the manifest, ``nunet models`` and ``nunet models fetch`` against a
real local HTTP server (nothing leaves this machine)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nunet import list_models, load_model, save_model
from nunet.cli import app
from nunet.core.model import untrained
from nunet.errors import ModelError, UsageError
from nunet.registry.manifest import fetch, pack, read_manifest


@pytest.fixture()
def release(tmp_path):
    """A release folder (two models of one family with cards, and their manifest) served over HTTP."""
    source = tmp_path / "source"
    source.mkdir()
    for w in (1.0, 0.5):
        name = "nunet-old" if w == 1.0 else "nunet-old-w0.5"
        save_model(untrained(seed=3), source / f"{name}.pt", name=name, w=w, family="nunet-old")
        (source / f"{name}.md").write_text(f"# {name}\n\nAn older family, for tests.\n")
    assets = tmp_path / "assets"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(assets))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    manifest = pack(sorted(source.glob("*.pt")), assets, base_url=url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield manifest, assets
    server.shutdown()


def test_pack_lists_files_with_sizes_hashes_family_and_cards(release):
    manifest, assets = release
    base_url, entries = read_manifest(manifest)
    assert base_url.startswith("http://127.0.0.1:") and {e.name for e in entries} == {"nunet-old", "nunet-old-w0.5"}
    for entry in entries:
        data = (assets / entry.file).read_bytes()
        assert entry.size == len(data) and entry.sha256 == hashlib.sha256(data).hexdigest()
        assert entry.family == "nunet-old" and entry.card == entry.file.replace(".pt", ".md")


def test_fetch_installs_a_verified_model_the_registry_then_serves(release, tmp_path):
    manifest, _ = release
    dest = tmp_path / "downloads"
    path = fetch("nunet-old-w0.5", dest, manifest=manifest)
    assert path == dest / "nunet-old-w0.5.pt" and (dest / "nunet-old-w0.5.md").is_file()
    assert sorted(p.name for p in dest.iterdir()) == ["nunet-old-w0.5.md", "nunet-old-w0.5.pt"]  # no .part left
    assert load_model(path).metadata["family"] == "nunet-old"
    assert fetch("nunet-old-w0.5", dest, manifest=manifest) == path  # already there: kept


def test_a_tampered_asset_installs_nothing(release, tmp_path):
    manifest, assets = release
    (assets / "nunet-old.pt").write_bytes((assets / "nunet-old.pt").read_bytes()[:-10] + b"0123456789")
    dest = tmp_path / "downloads"
    with pytest.raises(ModelError, match="does not match the manifest.*nothing was installed"):
        fetch("nunet-old", dest, manifest=manifest)
    assert not any(dest.iterdir())


def test_unknown_names_and_unreachable_servers_are_one_line_errors(release, tmp_path, monkeypatch):
    manifest, _ = release
    with pytest.raises(UsageError, match="'nunet-nope' is not a downloadable model; the manifest lists: nunet-old"):
        fetch("nunet-nope", tmp_path, manifest=manifest)
    monkeypatch.setenv("NUNET_MODEL_URL", "http://127.0.0.1:9")  # NUNET_MODEL_URL replaces the base URL
    with pytest.raises(ModelError, match=r"127\.0\.0\.1:9/nunet-old\.pt: download failed .*NUNET_MODEL_URL"):
        fetch("nunet-old", tmp_path / "d", manifest=manifest)


def test_cli_lists_the_shipped_manifest_and_fetch_downloads_into_the_user_folder(release, monkeypatch):
    manifest, assets = release
    listed = CliRunner().invoke(app, ["models"])
    shipped = {e.name for e in read_manifest()[1]}
    assert listed.exit_code == 0 and "not installed" in listed.output and "nunet-v7" in listed.output
    assert "nunet-v7" in shipped
    # the shipped manifest, with its base URL replaced by the local server holding a model of that name
    entry = next(e for e in read_manifest(manifest)[1] if e.name == "nunet-old")
    (assets / "nunet-v7.pt").write_bytes((assets / entry.file).read_bytes())
    monkeypatch.setenv("NUNET_MODEL_URL", read_manifest(manifest)[0])
    fetched = CliRunner().invoke(app, ["models", "fetch", "nunet-v7"])
    assert fetched.exit_code == 1 and "does not match the manifest" in fetched.output  # not nunet-v7's bytes
    bad = CliRunner().invoke(app, ["models", "fetch", "nunet-nope"])
    assert bad.exit_code == 2 and "not a downloadable model" in bad.output


def test_the_shipped_manifest_names_models_that_are_not_shipped():
    installed = {e.name for e in list_models()}
    base_url, entries = read_manifest()
    assert base_url.startswith("https://") and entries
    assert not installed & {e.name for e in entries}
    for entry in entries:
        assert len(entry.sha256) == 64 and entry.size > 1_000_000 and entry.card


def test_fetched_models_are_found_by_name(release, monkeypatch, tmp_path):
    manifest, _ = release
    from nunet.registry.models import download_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    fetch("nunet-old", manifest=manifest)
    assert download_dir() == tmp_path / "xdg" / "nunet" / "models"
    assert load_model("nunet-old").path.parent == download_dir()
    assert json.loads(json.dumps(load_model("nunet-old").metadata))["w"] == 1.0


def test_manifest_file_is_package_data():
    from importlib import resources

    assert resources.files("nunet.registry").joinpath("manifest.json").is_file()
    assert Path(str(resources.files("nunet.registry"))).is_dir()


def test_listed_descriptions_never_call_an_older_model_the_default():
    assert not [e.name for e in read_manifest()[1] if "default" in e.description]
