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

    def store(self, *, study_uid: str, series_uid: str, sop_uid: str, data: bytes, sha256: str = "") -> str:
        """Keep the instance durably and return its storage key (`sha256`: the content's, when known)."""
        ...

    def read(self, key: str) -> bytes:
        """The Part 10 file as stored."""
        ...

    def delete(self, key: str) -> None:
        """Remove an instance whose index row could not be written (no orphan files)."""
        ...


class LocalStorage:
    """Files under <data dir>/dicom/<study>/<series>/<sop>-<sha256 prefix>.dcm."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):  # keys are made of UIDs; anything else is a trick
            raise ValueError(f"storage key outside the DICOM folder: {key}")
        return self.root / key

    def store(self, *, study_uid: str, series_uid: str, sop_uid: str, data: bytes, sha256: str = "") -> str:
        """One write and one fdatasync per instance, as a PACS does.

        The name carries a hash of the content, so a file already there with the same size is this
        instance (a re-send); a shorter one was left by a crash, has no index row, and is rewritten.
        Written in place rather than renamed: the file's fdatasync also commits its directory entry
        on ext4 and xfs (one journal transaction), which a rename made afterwards would not share.
        A folder made for a new series is fsync'd once, when it is made.
        """
        key = self.key_for(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
                           sha256=sha256 or hashlib.sha256(data).hexdigest())
        path = self._path(key)
        if not path.parent.is_dir():
            self._make_folder(path.parent)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            if path.stat().st_size == len(data):
                return key  # the same content, already here
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # a partial file left by a crash
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fdatasync(fd)
        finally:
            os.close(fd)
        return key

    @staticmethod
    def key_for(*, study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
        return f"{_safe(study_uid)}/{_safe(series_uid)}/{_safe(sop_uid)}-{sha256[:16]}.dcm"

    def _make_folder(self, folder: Path) -> None:
        """Create the series folder and make its entries in the parents durable."""
        missing = [p for p in (folder, *folder.parents) if not p.exists() and p.is_relative_to(self.root)]
        folder.mkdir(parents=True, exist_ok=True)
        for made in reversed(missing):
            _fsync_dir(made.parent)

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


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
