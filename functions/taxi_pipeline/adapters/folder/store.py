"""FolderStore: a folder as the lake, with GCS semantics (atomic commit, generations, events)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from taxi_pipeline.domain.datasets import is_safe_object_name
from taxi_pipeline.errors import InvalidMessage, PermanentError
from taxi_pipeline.pipeline.ports import ObjectInfo

STALE_PART_SECONDS = 3600
"""Age past which a ``.tmp/*.part`` file is a dead process's leftover."""


class _Writer:
    def __init__(self, handle: os.PathLike[str] | str) -> None:
        self._file = open(handle, "wb")  # noqa: SIM115 - closed by FolderStore.writer
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.md5.update(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        self._file.close()


class FolderStore:
    """Objects are files under ``root`` named like GCS objects; metadata in ``.meta/``.

    A write goes to ``.tmp/`` and is renamed into place only when the block ends cleanly, so a
    failed or unverified download never appears under ``raw/``. ``on_finalized`` plays the role
    of the GCS object-finalized event.
    """

    def __init__(
        self, root: Path, on_finalized: Callable[[ObjectInfo], None] | None = None
    ) -> None:
        self.root = root.resolve()
        self.bucket = "local-lake"
        self.on_finalized = on_finalized
        (self.root / ".tmp").mkdir(parents=True, exist_ok=True)
        self._sweep_stale_parts()

    def _sweep_stale_parts(self) -> None:
        """Remove partial writes a killed process left behind (a ``finally`` never ran).

        Only parts older than :data:`STALE_PART_SECONDS` go: a write in progress in another
        process keeps touching its part, and no download takes that long without a byte.
        """
        cutoff = time.time() - STALE_PART_SECONDS
        for part in (self.root / ".tmp").glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()

    def _path(self, name: str) -> Path:
        if not is_safe_object_name(name):
            raise InvalidMessage(f"object name {name!r} is not a safe lake object name")
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root) or path.name.startswith("."):
            raise InvalidMessage(f"object name {name!r} escapes the lake")
        return path

    def _meta_path(self, name: str) -> Path:
        return self.root / ".meta" / f"{name}.json"

    def stat(self, name: str) -> ObjectInfo | None:
        path = self._path(name)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        meta: dict[str, object] = {}
        try:
            meta = json.loads(self._meta_path(name).read_text())
        except (FileNotFoundError, ValueError):
            meta = {}
        if meta.get("size") != size:
            # Not written by this store (copied in by hand): no metadata, generation from mtime.
            meta = {"generation": str(path.stat().st_mtime_ns), "metadata": {}}
        metadata = meta.get("metadata")
        return ObjectInfo(
            bucket=self.bucket,
            name=name,
            generation=str(meta["generation"]),
            size=size,
            uri=path.as_uri(),
            md5_base64=str(meta["md5"]) if meta.get("md5") else None,
            metadata=dict(metadata) if isinstance(metadata, dict) else {},
        )

    @contextmanager
    def writer(self, name: str, metadata: Mapping[str, str]) -> Iterator[_Writer]:
        final = self._path(name)
        token = uuid.uuid4().hex
        tmp = self.root / ".tmp" / f"{token}.part"
        # Unique per writer: concurrent writers of one object (a redelivered download running
        # beside the first) must not rename each other's metadata file away.
        meta_tmp = self.root / ".tmp" / f"{token}.meta.part"
        writer = _Writer(tmp)
        try:
            yield writer
            writer.close()
            final.parent.mkdir(parents=True, exist_ok=True)
            meta = {
                "generation": str(time.time_ns()),
                "size": writer.size,
                "md5": base64.b64encode(writer.md5.digest()).decode(),
                "metadata": dict(metadata),
            }
            meta_path = self._meta_path(name)
            meta_path.parent.mkdir(parents=True, exist_ok=True)
            meta_tmp.write_text(json.dumps(meta))
            os.replace(tmp, final)
            os.replace(meta_tmp, meta_path)
        except BaseException:
            writer.close()
            tmp.unlink(missing_ok=True)
            meta_tmp.unlink(missing_ok=True)
            raise
        info = self.stat(name)
        if info is not None and self.on_finalized is not None:
            self.on_finalized(info)

    def read_head(self, name: str, size: int) -> bytes:
        with self._path(name).open("rb") as handle:
            return handle.read(size)

    @contextmanager
    def open_read(self, name: str) -> Iterator[BinaryIO]:
        path = self._path(name)
        try:
            handle = path.open("rb")
        except FileNotFoundError as exc:
            raise PermanentError(f"{name} is not in the lake") from exc
        with handle:
            yield handle

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
        self._meta_path(name).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[ObjectInfo]:
        found = []
        for path in sorted(self.root.rglob("*")):
            if not path.is_file():
                continue
            name = path.relative_to(self.root).as_posix()
            if name.startswith(".") or not name.startswith(prefix):
                continue
            info = self.stat(name)
            if info is not None:
                found.append(info)
        return found
