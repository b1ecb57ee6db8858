"""An Orthanc server as the image archive (HEALTHRELAY_IMAGING_BACKEND=orthanc), over its REST API.

Orthanc answers `POST /instances` only after writing the file (with `SyncStorageArea`, its default,
after an fsync), so `store` returning means durable. The storage key is Orthanc's instance id (a
hash of the patient, study, series and SOP UIDs). One keep-alive HTTP connection per thread: ingest
runs in the receiver's association threads and the web server's worker threads.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import re
import threading
from typing import Any
from urllib.parse import quote, urlsplit

log = logging.getLogger("healthrelay.imaging.orthanc")

_ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


class OrthancError(RuntimeError):
    """Orthanc refused or failed a request; the message names the call and Orthanc's answer."""


class OrthancStorage:
    name = "orthanc"

    def __init__(self, url: str, *, username: str = "", password: str = "", timeout: float = 60.0) -> None:
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"HEALTHRELAY_ORTHANC_URL must be http(s)://host:port, not {url!r}")
        self.url = url.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._headers: dict[str, str] = {}
        if username:
            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._local = threading.local()

    # --- HTTP -------------------------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/octet-stream") -> tuple[int, bytes]:
        """One call to Orthanc's REST API; a stale keep-alive connection is retried once."""
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, self._prefix + path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                self._drop_connection()
                if attempt == 2:
                    raise
                continue
            except OSError:
                self._drop_connection()
                raise
            if response.getheader("connection", "").lower() == "close":
                self._drop_connection()
            return response.status, data
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, method: str, path: str, body: bytes | None = None,
              content_type: str = "application/octet-stream") -> Any:
        status, data = self.request(method, path, body, content_type)
        if status >= 400:
            raise OrthancError(f"Orthanc {method} {path} answered {status}: {data[:200]!r}")
        return json.loads(data) if data else None

    # --- StorageBackend ---------------------------------------------------------------------------------

    def store(self, *, study_uid: str, series_uid: str, sop_uid: str, data: bytes, sha256: str = "") -> str:
        answer = self._json("POST", "/instances", data, "application/dicom")
        if not isinstance(answer, dict) or not _ORTHANC_ID.match(str(answer.get("ID", ""))):
            raise OrthancError(f"Orthanc did not store {sop_uid}: {str(answer)[:200]}")
        key = str(answer["ID"])
        if answer.get("Status") == "AlreadyStored":
            # Orthanc keeps its first copy: make sure it is this very file, or the index would lie.
            kept = self.read(key)
            if hashlib.sha256(kept).digest() != hashlib.sha256(data).digest():
                raise OrthancError(f"Orthanc already holds another version of {sop_uid} ({key})")
        return key

    def read(self, key: str) -> bytes:
        _check_key(key)
        status, data = self.request("GET", f"/instances/{quote(key)}/file")
        if status == 404:
            raise FileNotFoundError(f"Orthanc has no instance {key}")
        if status >= 400:
            raise OrthancError(f"Orthanc GET /instances/{key}/file answered {status}")
        return data

    def delete(self, key: str) -> None:
        _check_key(key)
        status, data = self.request("DELETE", f"/instances/{quote(key)}")
        if status >= 400 and status != 404:
            raise OrthancError(f"Orthanc DELETE /instances/{key} answered {status}: {data[:200]!r}")

    # --- beyond the protocol: what the interop scenario and operators use -----------------------------

    def system(self) -> dict[str, Any]:
        return self._json("GET", "/system")

    def find_instance(self, sop_uid: str) -> str | None:
        """Orthanc's id for a SOP Instance UID, or None."""
        answer = self._json("POST", "/tools/lookup", sop_uid.encode(), "text/plain") or []
        for item in answer:
            if item.get("Type") == "Instance":
                return str(item["ID"])
        return None


def _check_key(key: str) -> None:
    if not _ORTHANC_ID.match(key or ""):
        raise ValueError(f"not an Orthanc instance id: {key[:60]!r}")
