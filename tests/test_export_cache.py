"""The export cache on its own: atomic entries, checksummed, rebuilt when damaged."""

import json
import logging
from pathlib import Path

import pytest

from inference.backends.cache import MANIFEST, ExportCache, cache_key, directory_digest


def builder(calls: list[Path]):
    def build(directory: Path) -> dict:
        calls.append(directory)
        (directory / "weights.bin").write_bytes(b"\x01\x02" * 1000)
        (directory / "sub").mkdir()
        (directory / "sub" / "vocab.txt").write_text("a\nb\n")
        return {"min_cosine": 0.99999}

    return build


def flip_a_byte(entry: Path) -> None:
    data = bytearray((entry / "weights.bin").read_bytes())
    data[10] ^= 0xFF
    (entry / "weights.bin").write_bytes(bytes(data))


def truncate(entry: Path) -> None:
    (entry / "weights.bin").write_bytes(b"\x01\x02" * 10)


def remove_a_file(entry: Path) -> None:
    (entry / "sub" / "vocab.txt").unlink()


def remove_the_manifest(entry: Path) -> None:
    # What a copy interrupted before its end leaves: files, no manifest.
    (entry / MANIFEST).unlink()


def garble_the_manifest(entry: Path) -> None:
    (entry / MANIFEST).write_text('{"files": {')


def test_an_entry_is_built_once_then_loaded(tmp_path: Path):
    calls: list[Path] = []
    cache = ExportCache(tmp_path / "exports")
    first = cache.get_or_build("model-onnx-1", builder(calls))
    second = cache.get_or_build("model-onnx-1", builder(calls))
    assert len(calls) == 1
    assert first == second
    assert first.path == tmp_path / "exports" / "model-onnx-1"
    assert first.meta == {"min_cosine": 0.99999}
    manifest = json.loads((first.path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"weights.bin", "sub/vocab.txt"}
    # Built beside its final place and renamed: no temporary directory is left.
    assert [p.name for p in (tmp_path / "exports").iterdir()] == ["model-onnx-1"]


@pytest.mark.parametrize(
    "damage", [flip_a_byte, truncate, remove_a_file, remove_the_manifest, garble_the_manifest]
)
def test_a_damaged_entry_is_detected_and_rebuilt(tmp_path: Path, caplog, damage):
    calls: list[Path] = []
    cache = ExportCache(tmp_path)
    entry = cache.get_or_build("key", builder(calls))
    damage(entry.path)
    with caplog.at_level(logging.WARNING, logger="inference.backends.cache"):
        rebuilt = cache.get_or_build("key", builder(calls))
    assert len(calls) == 2
    assert "corrupt; building it again" in caplog.text
    assert (rebuilt.path / "weights.bin").read_bytes() == b"\x01\x02" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path):
    def failing(directory: Path) -> dict:
        (directory / "half.bin").write_bytes(b"x")
        raise RuntimeError("export failed")

    cache = ExportCache(tmp_path)
    with pytest.raises(RuntimeError, match="export failed"):
        cache.get_or_build("key", failing)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_cache_raises(tmp_path: Path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(NotADirectoryError, match="file"):
        ExportCache(not_a_directory / "exports").get_or_build("key", builder([]))


def test_keys_change_with_what_the_export_depends_on(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"one")
    digest = directory_digest(model)
    identity = {"model": digest, "torch": "2.13.0", "openvino": "2026.4.1"}
    key = cache_key("all-MiniLM-L6-v2", "openvino", identity)
    assert key.startswith("all-MiniLM-L6-v2-openvino-")
    assert cache_key("all-MiniLM-L6-v2", "openvino", identity) == key
    assert cache_key("all-MiniLM-L6-v2", "openvino", {**identity, "openvino": "2027.0"}) != key
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "weights.bin").write_bytes(b"two")
    assert directory_digest(changed) != digest
