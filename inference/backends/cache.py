"""The export cache: one directory per model, backend and library versions.

An entry is built in a temporary directory next to its final place and renamed
into place only once complete, its manifest (every file's size and SHA-256)
written last. An entry is loaded only if its manifest lists every file with
the recorded checksum; anything else (a partial write, a truncated or edited
file) is logged, removed and built again.
"""

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class CorruptEntry(Exception):
    """An entry whose manifest is missing or unreadable, or whose files do not match it."""


@dataclass(frozen=True)
class Entry:
    path: Path
    # What the builder recorded (for example the fidelity figure), as JSON.
    meta: dict[str, Any]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@lru_cache(maxsize=8)
def directory_digest(directory: Path) -> str:
    """SHA-256 over every file of a model directory: its names and its contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(bytes.fromhex(file_digest(path)))
    return digest.hexdigest()


def cache_key(name: str, backend: str, identity: Mapping[str, str]) -> str:
    """A directory name: readable prefix, and a digest of everything the export depends on."""
    digest = hashlib.sha256(json.dumps(dict(identity), sort_keys=True).encode()).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{safe}-{backend}-{digest[:20]}"


class ExportCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def get_or_build(self, key: str, build: Callable[[Path], dict[str, Any]]) -> Entry:
        """The verified entry ``key``; built first (by ``build`` into an empty directory,
        returning its metadata) when it is missing or corrupt."""
        final = self.root / key
        if final.exists():
            try:
                return self._verified(final)
            except CorruptEntry as error:
                log.warning(
                    "export cache entry is corrupt; building it again: %s",
                    error,
                    extra={"entry": str(final)},
                )
                self._remove(final)
        return self._build(final, build)

    def _build(self, final: Path, build: Callable[[Path], dict[str, Any]]) -> Entry:
        self.root.mkdir(parents=True, exist_ok=True)
        building = self.root / f".building-{final.name}-{uuid.uuid4().hex[:8]}"
        building.mkdir()
        try:
            meta = build(building)
            _write_manifest(building, meta)
            try:
                building.rename(final)
            except OSError:
                # Another process finished the same entry first: use theirs.
                if not final.exists():
                    raise
                self._remove(building)
        except BaseException:
            self._remove(building)
            raise
        return self._verified(final)

    @staticmethod
    def _verified(entry: Path) -> Entry:
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            files: dict[str, dict[str, Any]] = manifest["files"]
            meta: dict[str, Any] = manifest["meta"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CorruptEntry(f"{entry.name}: unreadable manifest ({error})") from error
        for name, recorded in files.items():
            path = entry / name
            if not path.is_file():
                raise CorruptEntry(f"{entry.name}: {name} is missing")
            if path.stat().st_size != recorded["size"] or file_digest(path) != recorded["sha256"]:
                raise CorruptEntry(f"{entry.name}: {name} does not match its checksum")
        return Entry(entry, meta)

    def _remove(self, path: Path) -> None:
        # Renamed away first, so no reader ever sees a half-removed entry.
        doomed = self.root / f".removing-{uuid.uuid4().hex[:8]}"
        try:
            path.rename(doomed)
        except OSError:
            return
        shutil.rmtree(doomed, ignore_errors=True)


def _write_manifest(directory: Path, meta: dict[str, Any]) -> None:
    files = {
        path.relative_to(directory).as_posix(): {
            "size": path.stat().st_size,
            "sha256": file_digest(path),
        }
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
    manifest = directory / MANIFEST
    with manifest.open("w") as file:
        json.dump({"files": files, "meta": meta}, file, indent=2, sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
