"""The model registry: folders, names, precedence, errors."""

from __future__ import annotations

import os
import shutil

import pytest

from nunet import list_models, load_model, save_model
from nunet.core.model import NUNet
from nunet.errors import ModelError
from nunet.registry.models import resolve_model


def test_env_folder_models_are_listed_with_metadata(model_dir):
    entries = {e.name: e for e in list_models()}
    entry = entries["nunet-test"]
    assert entry.w == 8.0 and entry.path.parent == model_dir
    assert entry.card is not None and entry.description == "test fixture, random init"
    assert entry.size_bytes > 6_000_000


def test_shipped_models_folder_is_scanned():
    from nunet.options import DEFAULT_MODEL

    shipped = {e.name for e in list_models()}
    assert {DEFAULT_MODEL, f"{DEFAULT_MODEL}-w0.75", f"{DEFAULT_MODEL}-w0.5"} <= shipped


def test_first_folder_wins_and_non_models_are_ignored(tmp_path, model_dir, monkeypatch):
    first = tmp_path / "first"
    first.mkdir()
    save_model(NUNet(), first / "other-file-name.pt", name="nunet-test", w=5.0)
    (first / "junk.pt").write_bytes(b"not a model")
    monkeypatch.setenv("NUNET_MODEL_PATH", os.pathsep.join([str(first), str(model_dir)]))
    entries = {e.name: e for e in list_models()}
    assert entries["nunet-test"].w == 5.0
    assert "junk" not in entries
    assert load_model("nunet-test").w == 5.0


def test_unknown_name_lists_available():
    with pytest.raises(ModelError) as info:
        resolve_model("nunet-w99")
    assert "unknown model 'nunet-w99'; available:" in str(info.value)
    assert "nunet-test" in str(info.value)


def test_path_outside_registry(tmp_path, model_path):
    copy = tmp_path / "elsewhere.pt"
    shutil.copy(model_path, copy)
    assert load_model(copy).name == "nunet-test"
    with pytest.raises(ModelError, match="model file not found"):
        load_model(tmp_path / "nothing.pt")


def test_one_cached_loader_per_file_and_device(tmp_path, model_path):
    import time

    from nunet.registry.models import clear_cache

    copy = tmp_path / "cached.pt"
    shutil.copy(model_path, copy)
    first = load_model(copy)
    assert load_model(copy) is first and load_model(first) is first  # loaded once
    time.sleep(0.01)
    save_model(NUNet(), copy, name="changed", w=3.0)  # a new file at the same path is loaded anew
    assert load_model(copy).name == "changed"
    clear_cache()
    assert load_model(copy) is not load_model(model_path)
    assert first.device == "cpu"  # never moved in place


def test_folders_named_pt_and_unreadable_files_never_crash_the_registry(tmp_path, model_dir, monkeypatch):
    odd = tmp_path / "odd"
    (odd / "folder.pt").mkdir(parents=True)
    (odd / "dangling.pt").symlink_to(tmp_path / "gone.pt")  # stat fails, as for a file that cannot be read
    monkeypatch.setenv("NUNET_MODEL_PATH", os.pathsep.join([str(odd), str(model_dir)]))
    assert "nunet-test" in {e.name for e in list_models()}  # both skipped
    with pytest.raises(ModelError, match="folder.pt: a folder, not a model file"):
        load_model(odd / "folder.pt")
    with pytest.raises(ModelError, match="dangling.pt: model file not found"):
        load_model(odd / "dangling.pt")


def test_a_file_rewritten_within_the_timestamp_resolution_is_not_served_stale(tmp_path):
    path = tmp_path / "m.pt"
    save_model(NUNet(), path, name="first", w=3.0)
    before = os.stat(path)
    assert load_model(path).name == "first"
    with open(path, "r+b") as stream:  # rewritten in place: same inode, the same mtime put back
        stream.truncate(0)
        save_model(NUNet(), tmp_path / "second.pt", name="second", w=3.0)
        stream.write((tmp_path / "second.pt").read_bytes())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns and os.stat(path).st_ino == before.st_ino
    assert load_model(path).name == "second"
    assert {e.name for e in list_models()} >= {"nunet-test"}
