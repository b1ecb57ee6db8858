"""Where DICOM instances are kept. The index (imaging/models.py) says which backend holds each one.

`store` returns only once the bytes are durable (the local backend fsyncs the file and its folder;
Orthanc answers its STOW after writing), so the receiver can acknowledge a C-STORE safely.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

from healthrelay.core.config import Settings, get_settings


class StorageBackend(Protocol):
    name: str

    def store(self, *, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> str:
        """Keep the instance durably and return its storage key."""
        ...

    def read(self, key: str) -> bytes:
        """The Part 10 file as stored."""
        ...

    def delete(self, key: str) -> None:
        """Remove an instance whose index row could not be written (no orphan files)."""
        ...


class LocalStorage:
    """Files under <data dir>/dicom/<study>/<series>/<sop>-<sha256 prefix>.dcm, written atomically."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"storage key outside the DICOM folder: {key}")
        return path

    def store(self, *, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()[:16]
        key = f"{_safe(study_uid)}/{_safe(series_uid)}/{_safe(sop_uid)}-{digest}.dcm"
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return key

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _safe(uid: str) -> str:
    """UIDs are digits and dots; anything else would be a path trick."""
    if not uid or len(uid) > 64 or any(c not in "0123456789." for c in uid):
        raise ValueError(f"not a DICOM UID: {uid[:70]!r}")
    return uid


_backends: dict[str, StorageBackend] = {}


def get_backend(name: str | None = None, settings: Settings | None = None) -> StorageBackend:
    """The configured backend (HEALTHRELAY_IMAGING_BACKEND), or a named one to read an older instance."""
    settings = settings or get_settings()
    name = name or settings.imaging_backend
    cache_key = f"{name}:{settings.data_dir}:{settings.orthanc_url}"
    if cache_key not in _backends:
        if name == "local":
            _backends[cache_key] = LocalStorage(settings.data_dir / "dicom")
        elif name == "orthanc":
            from healthrelay.imaging.orthanc import OrthancStorage

            _backends[cache_key] = OrthancStorage(settings.orthanc_url, username=settings.orthanc_username,
                                                  password=settings.orthanc_password)
        else:
            raise ValueError(f"unknown imaging backend {name!r} (HEALTHRELAY_IMAGING_BACKEND: local or orthanc)")
    return _backends[cache_key]
