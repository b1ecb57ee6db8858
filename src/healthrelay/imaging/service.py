"""Taking in one DICOM instance: validate, store durably, index, match the patient, route a new study.

Both doors into the archive use `ingest`: the DIMSE receiver (imaging/scp.py, C-STORE) and STOW-RS
(imaging/dicomweb.py). The index rows are written in the caller's transaction; the file is written
first (fsync'd by the storage backend) and deleted again if that transaction does not commit, so
the archive never holds a file without an index row nor a row without its file.

`ImagingInstance.summary` keeps what the viewer and WADO-RS metadata need without opening the file:
    window_center, window_width (first pair; None when the device sent none), rescale_slope,
    rescale_intercept, pixel_spacing [row, column] mm, photometric_interpretation,
    image_position [x, y, z], image_orientation [6 cosines], slice_location, number_of_frames,
    frame_time_ms, bits_allocated, bits_stored, pixel_representation, samples_per_pixel, modality,
    lossy (True when the device says it compressed lossily), has_pixels.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date
from functools import lru_cache
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from sqlalchemy import event as sa_event
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction

from healthrelay.accounts.models import User
from healthrelay.audit import service as audit
from healthrelay.core.db import take_sqlite_write_lock, utcnow
from healthrelay.core.errors import Conflict, InvalidInput
from healthrelay.imaging.matching import DicomPatient, match_patient, name_for_matching
from healthrelay.imaging.models import ImagingInstance, ImagingSeries, ImagingStudy, Modality, PatientMatch
from healthrelay.imaging.storage import StorageBackend, get_backend
from healthrelay.teleconsult.service import route_study

log = logging.getLogger("healthrelay.imaging")

# Storage SOP classes a county's devices send (modality images, ECG waveforms, reports, documents).
IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.12.2": "X-Ray Radiofluoroscopic Image Storage",
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "VL Photographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.77.1.6": "VL Whole Slide Microscopy Image Storage",
}
OTHER_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.2": "General ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
}
ACCEPTED_SOP_CLASSES: dict[str, str] = {**IMAGE_SOP_CLASSES, **OTHER_SOP_CLASSES}
# ECG waveforms are read by the ECG centre, not indexed as images: both doors hand them to `ingest_ecg`.
ECG_WAVEFORM_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.9.1.1", "1.2.840.10008.5.1.4.1.1.9.1.2"})

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Tags as pydicom's own tag type: a Dataset looks them up without converting them first (hot path).
_PIXEL_TAGS = (BaseTag(0x7FE00010), BaseTag(0x7FE00008), BaseTag(0x7FE00009))  # Pixel Data, Float, Double Float
_SHARED_GROUPS, _PER_FRAME_GROUPS = BaseTag(0x52009229), BaseTag(0x52009230)  # functional groups (enhanced)
_PENDING = "healthrelay.imaging.pending_files"
_TAGS = {keyword: BaseTag(tag_for_keyword(keyword)) for keyword in (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "WindowCenter", "WindowWidth",
    "RescaleSlope", "RescaleIntercept", "PixelSpacing", "ImagerPixelSpacing", "ImagePositionPatient",
    "ImageOrientationPatient", "SliceLocation", "NumberOfFrames", "FrameTime", "PhotometricInterpretation",
    "Modality", "LossyImageCompression", "InstanceNumber", "TransferSyntaxUID", "Rows", "Columns",
    "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation")}


class Stored:
    """What `ingest` did: `instance` and `study` (index rows, loaded on first use), `created` False for a re-send.

    The receiver never looks at the rows it just wrote, so they are not read back unless asked for.
    """

    def __init__(self, *, db: Session, created: bool, sop_instance_uid: str, study_id: int,
                 instance: ImagingInstance | None = None, study: ImagingStudy | None = None) -> None:
        self.created = created  # False: the very same instance was already stored, nothing written
        self._db = db
        self._sop_instance_uid = sop_instance_uid
        self._study_id = study_id
        self._instance = instance
        self._study = study

    @property
    def instance(self) -> ImagingInstance:
        if self._instance is None:
            self._instance = self._db.execute(
                select(ImagingInstance).where(ImagingInstance.sop_instance_uid == self._sop_instance_uid)
            ).scalar_one()
        return self._instance

    @property
    def study(self) -> ImagingStudy:
        if self._study is None:
            study = self._db.get(ImagingStudy, self._study_id)
            assert study is not None
            self._study = study
        return self._study

    def __repr__(self) -> str:
        return f"Stored(sop_instance_uid={self._sop_instance_uid!r}, created={self.created})"


@dataclass
class Parsed:
    """A validated instance and the fields the index keeps."""

    dataset: Dataset
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sha256: str


# --- validation ----------------------------------------------------------------------------------

class _ParseProblems(logging.Handler):
    """Collects what pydicom logs while this thread parses (it reads a truncated file without raising)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        problems = getattr(self.local, "problems", None)
        if problems is not None:
            problems.append(record.getMessage())

    @contextmanager
    def collect(self) -> Iterator[list[str]]:
        self.local.problems = problems = []
        try:
            yield problems
        finally:
            self.local.problems = None


_problems = _ParseProblems()
logging.getLogger("pydicom").addHandler(_problems)


def _bad(zh: str, en: str, code: str) -> InvalidInput:
    return InvalidInput(f"{zh} / {en}", code=code)


def parse(data: bytes) -> Parsed:
    """Read and check a Part 10 file; raise InvalidInput naming the first problem found."""
    if len(data) < 140 or data[128:132] != b"DICM" or data[132:134] != b"\x02\x00":
        raise _bad("不是 DICOM 文件（缺少文件头 DICM）", "not a DICOM Part 10 file (no DICM preamble)", "not_dicom")
    truncated = _bad("DICOM 文件不完整（被截断）", "the DICOM file is truncated", "truncated")
    with _problems.collect() as problems:
        try:
            ds, transfer_syntax = _read(data)
        except (InvalidDicomError, EOFError, ValueError, KeyError, NotImplementedError, OSError, struct.error,
                zlib.error) as exc:
            if isinstance(exc, EOFError | struct.error | zlib.error) or "No tag to read" in str(exc):
                raise truncated from None
            raise _bad("无法读取 DICOM 文件", f"not a readable DICOM file ({str(exc)[:120]})", "not_dicom") from None
        if any("End of file" in p for p in problems):
            raise truncated
        if ds is None or len(ds) == 0:
            raise _bad("不是 DICOM 文件（没有文件元信息或数据集）",
                       "not a DICOM file (no file meta information or no data set)", "not_dicom")
        if not transfer_syntax:
            raise _bad("文件元信息缺少传输语法", "file meta information has no Transfer Syntax UID", "missing_uid")
        sop_class = _uid(ds, "SOPClassUID", "SOP Class UID")
        if sop_class not in ACCEPTED_SOP_CLASSES:
            name = UID(sop_class).name
            raise _bad(f"不接收的 SOP 类：{name}", f"unsupported SOP class {name} ({sop_class})",
                       "unsupported_sop_class")
        _check_pixel_data(ds, sop_class=sop_class, transfer_syntax=transfer_syntax)
        if _cut_short(ds, size=len(data), transfer_syntax=transfer_syntax):
            raise truncated
        sop_instance = _uid(ds, "SOPInstanceUID", "SOP Instance UID")
        study_uid = _uid(ds, "StudyInstanceUID", "Study Instance UID")
        series_uid = _uid(ds, "SeriesInstanceUID", "Series Instance UID")
    return Parsed(dataset=ds, transfer_syntax_uid=transfer_syntax, sop_class_uid=sop_class,
                  sop_instance_uid=sop_instance, study_uid=study_uid, series_uid=series_uid,
                  sha256=hashlib.sha256(data).hexdigest())


def _read(data: bytes) -> tuple[Dataset | None, str]:
    """The data set (elements left raw until asked for) and the transfer syntax its file meta names.

    pydicom's element reader does the parsing; `dcmread` itself is skipped because it also converts and
    checks every file meta element, which for a small instance took longer than reading the data set.
    """
    stream = io.BytesIO(data)
    stream.seek(132)
    meta = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=_past_file_meta)
    if len(meta) == 0:
        return None, ""
    transfer_syntax = _ascii(meta, "TransferSyntaxUID")
    implicit, little = transfer_syntax == ImplicitVRLittleEndian, transfer_syntax != ExplicitVRBigEndian
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        stream = DicomBytesIO(zlib.decompress(stream.read(), -zlib.MAX_WBITS))
    if not stream.read(1):
        return None, transfer_syntax
    stream.seek(-1, 1)
    return read_dataset(stream, is_implicit_VR=implicit, is_little_endian=little), transfer_syntax


def _past_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 0x0002


def _uid(ds: Dataset, keyword: str, label: str) -> str:
    value = _ascii(ds, keyword)
    if not value or len(value) > 64 or not _UID.match(value):
        raise _bad(f"缺少或无效的 {label}", f"missing or invalid {label}", "missing_uid")
    return value


def _cut_short(ds: Dataset, *, size: int, transfer_syntax: str) -> bool:
    """pydicom keeps a value cut off by the end of the file and stops quietly at a cut element header.

    The last top-level element (still raw: nothing read it) must end exactly where the file ends.
    Undefined lengths end in a delimiter, whose absence pydicom logs (see `_ParseProblems`).
    """
    keys = list(ds.keys())
    if not keys:
        return True
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return False  # positions are in the inflated stream; the inflater itself fails on a cut stream
    last = ds.get_item(keys[-1])
    if not isinstance(last, RawDataElement) or last.length == 0xFFFFFFFF:
        return False
    return last.value_tell + last.length != size


def _check_pixel_data(ds: Dataset, *, sop_class: str, transfer_syntax: str) -> None:
    has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
    if sop_class not in IMAGE_SOP_CLASSES:
        return
    if not has_pixels:
        raise _bad("图像缺少像素数据（文件可能被截断）", "image has no pixel data (the file may be truncated)",
                   "truncated")
    if 0x7FE00010 not in ds:
        return
    try:
        frames = int(_ascii(ds, "NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise _bad("帧数无效", "invalid Number of Frames", "invalid_image") from None
    if _encapsulated(transfer_syntax):
        from pydicom.encaps import generate_fragments

        try:
            fragments = sum(1 for _ in generate_fragments(ds.PixelData)) - 1  # less the basic offset table
        except (ValueError, EOFError):
            raise _bad("压缩像素数据不完整（被截断）", "compressed pixel data is truncated", "truncated") from None
        if fragments < 1 or (frames > 1 and fragments < frames and _has_offsets(ds.PixelData, frames)):
            raise _bad("压缩像素数据不完整（被截断）", "compressed pixel data is truncated", "truncated")
        return
    try:
        expected = _native_length(ds, frames)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise _bad("图像模块不完整（缺少行、列或位数）", "image module incomplete (rows, columns or bits missing)",
                   "invalid_image") from None
    element = ds.get_item(_PIXEL_TAGS[0])
    got = len(element.value or b"") if isinstance(element, RawDataElement) else len(ds.PixelData)
    if got < expected:
        raise _bad(f"像素数据不完整：应有 {expected} 字节，实际 {got} 字节",
                   f"pixel data is truncated: {got} of {expected} bytes", "truncated")


@lru_cache(maxsize=64)
def _encapsulated(transfer_syntax: str) -> bool:
    return UID(transfer_syntax).is_encapsulated


def _native_length(ds: Dataset, frames: int) -> int:
    """Bytes of uncompressed pixel data the image module declares (PS3.5 8.1.1; 4:2:2 keeps 2 of 3 samples)."""
    rows, columns, samples, bits = (_ushort(ds, k) for k in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated"))
    if rows is None or columns is None or samples is None or bits is None:
        raise ValueError("image pixel module incomplete")
    pixels = rows * columns * frames * samples
    length = (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)
    if _ascii(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        length = length // 3 * 2
    return length


def _has_offsets(pixel_data: bytes, frames: int) -> bool:
    """A basic offset table lists one entry per frame, so fewer fragments than frames is a cut file."""
    if len(pixel_data) < 8:
        return False
    table_length = int.from_bytes(pixel_data[4:8], "little")
    return table_length == 4 * frames


# --- the index ---------------------------------------------------------------------------------------

# The two statements every instance runs go straight to the database driver (`_run`): SQLAlchemy's
# statement caching, parameter processing and result objects cost more than the database work itself.
# The session still owns the transaction: it began it and commits or rolls it back.
# One round trip: is the instance already here, and the series and study it belongs to (when known).
_LOOKUP = (
    "SELECT (SELECT id FROM imaging_instances WHERE sop_instance_uid = :sop),"
    " series.id, series.study_id, study.study_instance_uid"
    " FROM (SELECT 1) AS one"
    " LEFT JOIN imaging_series AS series ON series.series_instance_uid = :series_uid"
    " LEFT JOIN imaging_studies AS study ON study.id = series.study_id")
_INSTANCE_COLUMNS = (
    "study_id", "series_id", "sop_instance_uid", "sop_class_uid", "instance_number", "transfer_syntax_uid",
    "number_of_frames", "rows", "columns", "storage_backend", "storage_key", "size_bytes", "sha256",
    "received_via", "calling_ae_title", "received_at", "summary")
# A concurrent copy of the same instance makes the insert a no-op (no row returned) instead of an error,
# so neither database needs a savepoint around it (PostgreSQL would refuse the rest of the transaction).
_INSERT_INSTANCE = (
    f"INSERT INTO imaging_instances ({', '.join(_INSTANCE_COLUMNS)})"
    f" VALUES ({', '.join(':' + c for c in _INSTANCE_COLUMNS)})"
    " ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id")
# sqlite3 takes :name parameters, psycopg %(name)s.
_PYFORMAT = {sql: re.sub(r":(\w+)", r"%(\1)s", sql) for sql in (_LOOKUP, _INSERT_INSTANCE)}


def _run(db: Session, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """One of the statements above in the session's transaction; the first row it returns."""
    connection = db.connection()
    sqlite = connection.dialect.name == "sqlite"
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql if sqlite else _PYFORMAT[sql], params)
        return cursor.fetchone()  # type: ignore[no-any-return]
    finally:
        cursor.close()


def _row_values(values: dict[str, Any], *, sqlite: bool) -> dict[str, Any]:
    """What the driver needs where SQLAlchemy's column types would have converted: JSON text, and on
    SQLite the naive UTC text its DateTime type stores."""
    values["summary"] = json.dumps(values["summary"])
    if sqlite:
        received_at = values["received_at"].astimezone(UTC).replace(tzinfo=None)
        values["received_at"] = received_at.isoformat(" ", "microseconds")
    return values


def ingest(db: Session, *, data: bytes, received_via: str, calling_ae_title: str = "",
           organisation_id: int | None = None, modality: Modality | None = None,
           by_user: User | None = None) -> Stored:
    """Validate, store durably and index one Part 10 instance in the caller's transaction.

    The file is written and flushed to disk before its index row is written, in this thread: handing
    the flush to a worker thread was no faster, as the worker waited for the GIL at every step.
    """
    parsed = parse(data)
    found = _run(db, _LOOKUP, {"sop": parsed.sop_instance_uid, "series_uid": parsed.series_uid})
    assert found is not None
    existing_id, series_id, study_id, study_uid = found
    if existing_id is not None:
        existing = db.get(ImagingInstance, existing_id)
        assert existing is not None
        return _already_stored(db, existing, parsed, data)
    if series_id is not None and study_uid != parsed.study_uid:
        raise _series_elsewhere(parsed.series_uid)
    if organisation_id is None and modality is not None:
        organisation_id = modality.organisation_id
    backend = get_backend()
    key = backend.store(study_uid=parsed.study_uid, series_uid=parsed.series_uid, sop_uid=parsed.sop_instance_uid,
                        data=data, sha256=parsed.sha256)
    pending: list[tuple[StorageBackend, str]] = db.info.setdefault(_PENDING, [])
    pending.append((backend, key))  # removed again if the transaction does not commit
    try:
        return _index(db, parsed=parsed, data=data, backend=backend, key=key,
                      known=(series_id, study_id) if series_id is not None else None,
                      received_via=received_via, calling_ae_title=calling_ae_title, organisation_id=organisation_id,
                      modality=modality, by_user=by_user)
    except _RacedDuplicate as raced:
        pending.remove((backend, key))
        if raced.existing.storage_key != key:
            backend.delete(key)
        return _already_stored(db, raced.existing, parsed, data)
    except BaseException:  # the caller may carry on with its transaction (STOW's other instances): no orphan
        pending.remove((backend, key))
        backend.delete(key)
        raise


def ingest_ecg(db: Session, *, data: bytes, received_via: str, organisation_id: int | None,
               calling_ae_title: str = "", by_user: User | None = None) -> Any:
    """An ECG waveform (12-lead or general) from the receiver or STOW-RS: the ECG centre's ingest (tele-ECG),
    which reads, flags, measures and puts it on the worklist; returns its EcgRecording."""
    from healthrelay.ecg import service as ecg

    if organisation_id is None:
        raise _bad("无法确定心电图的发送机构", "the sending organisation of this ECG is unknown", "unknown_sender")
    return ecg.ingest(db, files={"ecg.dcm": data}, organisation_id=organisation_id, by=by_user,
                      via="dicom" if received_via == "dimse" else "stow", source=calling_ae_title)


class _RacedDuplicate(Exception):
    def __init__(self, existing: ImagingInstance) -> None:
        self.existing = existing


def _already_stored(db: Session, existing: ImagingInstance, parsed: Parsed, data: bytes) -> Stored:
    if existing.sha256 == parsed.sha256 or _same_dataset(existing, data):
        return Stored(db=db, created=False, sop_instance_uid=existing.sop_instance_uid, study_id=existing.study_id,
                      instance=existing)
    raise Conflict(f"SOP 实例 {parsed.sop_instance_uid} 已存在且内容不同 / SOP instance {parsed.sop_instance_uid} "
                   "is already stored with different content", code="instance_conflict")


def _same_dataset(existing: ImagingInstance, data: bytes) -> bool:
    """The same dataset wrapped in another file meta header (sent once by DIMSE, once by STOW) is a re-send."""
    try:
        stored = get_backend(existing.storage_backend).read(existing.storage_key)
    except Exception:  # noqa: BLE001 - unreadable copy: treat as different, the caller gets a Conflict
        log.exception("could not read stored instance %s to compare", existing.sop_instance_uid)
        return False
    return _dataset_bytes(stored) == _dataset_bytes(data)


def _dataset_bytes(data: bytes) -> bytes:
    """The bytes after the file meta group (its length is in the group length element)."""
    # 128 preamble + "DICM" + (0002,0000) UL element: tag 4, VR 2, length 2, value 4
    if data[132:138] != b"\x02\x00\x00\x00UL":
        return data  # no group length to go by: compare whole files (a difference is then a conflict)
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length:]


def _index(db: Session, *, parsed: Parsed, data: bytes, backend: StorageBackend, key: str,
           known: tuple[int, int] | None, received_via: str, calling_ae_title: str,
           organisation_id: int | None, modality: Modality | None, by_user: User | None) -> Stored:
    ds = parsed.dataset
    study: ImagingStudy | None = None
    study_created = False
    connection = db.connection()
    if known is not None:  # the usual case: one more instance of a series already here
        series_id, study_id = known
        series_created = False
    else:
        take_sqlite_write_lock(db)  # before the savepoints that create the study and series
        study, study_created = _study(db, parsed, organisation_id=organisation_id, modality=modality)
        series, series_created = _series(db, parsed, study)
        series_id, study_id = series.id, study.id
    values = {
        "study_id": study_id, "series_id": series_id, "sop_instance_uid": parsed.sop_instance_uid,
        "sop_class_uid": parsed.sop_class_uid, "instance_number": _int(_ascii(ds, "InstanceNumber")),
        "transfer_syntax_uid": parsed.transfer_syntax_uid, "number_of_frames": _int(_ascii(ds, "NumberOfFrames")) or 1,
        "rows": _ushort(ds, "Rows"), "columns": _ushort(ds, "Columns"), "storage_backend": backend.name,
        "size_bytes": len(data), "sha256": parsed.sha256, "received_via": received_via[:20],
        "calling_ae_title": calling_ae_title[:16], "summary": summarise(ds), "received_at": utcnow(),
        "storage_key": key,
    }
    inserted = _run(db, _INSERT_INSTANCE, _row_values(values, sqlite=connection.dialect.name == "sqlite"))
    if inserted is None:  # another association stored the same SOP instance a moment ago
        existing = db.scalar(select(ImagingInstance)
                             .where(ImagingInstance.sop_instance_uid == parsed.sop_instance_uid))
        if existing is None:
            raise RuntimeError(f"insert of {parsed.sop_instance_uid} neither happened nor conflicted")
        raise _RacedDuplicate(existing)
    # The instance counts of the series and the study are kept by a trigger (migration 0008).
    if series_created and study is not None:
        modalities = [m for m in study.modalities_in_study.split("\\") if m]
        series_modality = _text(ds, "Modality", 16)
        connection.execute(update(ImagingStudy.__table__).where(ImagingStudy.__table__.c.id == study_id).values(
            number_of_series=ImagingStudy.__table__.c.number_of_series + 1,
            modalities_in_study="\\".join([*modalities, series_modality])[:64]
            if series_modality and series_modality not in modalities else study.modalities_in_study))
    if study is not None:  # written here through the ORM a moment ago: the counters moved under it
        db.expire(study, ["number_of_instances", "number_of_series", "modalities_in_study", "updated_at"])
        db.expire(series, ["number_of_instances"])
        if study_created:  # once per study, with its first instance indexed
            _on_new_study(db, study=study, ds=ds, modality=modality, organisation_id=organisation_id,
                          received_via=received_via, calling_ae_title=calling_ae_title, by_user=by_user)
    return Stored(db=db, created=True, sop_instance_uid=parsed.sop_instance_uid, study_id=study_id, study=study)


def _study(db: Session, parsed: Parsed, *, organisation_id: int | None,
           modality: Modality | None) -> tuple[ImagingStudy, bool]:
    study = db.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == parsed.study_uid))
    if study is not None:
        return study, False
    ds = parsed.dataset
    name = _person_name(ds)
    study = ImagingStudy(
        study_instance_uid=parsed.study_uid, organisation_id=organisation_id,
        modality_id=modality.id if modality else None, patient_match=PatientMatch.UNMATCHED,
        study_date=_date(ds.get("StudyDate")), study_time=_text(ds, "StudyTime", 16),
        accession_number=_text(ds, "AccessionNumber", 16), study_id=_text(ds, "StudyID", 16),
        description=_text(ds, "StudyDescription", 200), referring_physician=_text(ds, "ReferringPhysicianName", 200),
        dicom_patient_name=name[:200], dicom_patient_id=_text(ds, "PatientID", 64),
        dicom_birth_date=_text(ds, "PatientBirthDate", 8), dicom_sex=_sex(ds), number_of_series=0,
        number_of_instances=0, received_at=utcnow(), updated_at=utcnow())
    try:
        with db.begin_nested():
            db.add(study)
    except IntegrityError:  # another association created it a moment ago
        db.expunge(study) if study in db else None
        found = db.scalar(select(ImagingStudy).where(ImagingStudy.study_instance_uid == parsed.study_uid))
        if found is None:
            raise
        return found, False
    return study, True


def _series(db: Session, parsed: Parsed, study: ImagingStudy) -> tuple[ImagingSeries, bool]:
    series = db.scalar(select(ImagingSeries).where(ImagingSeries.series_instance_uid == parsed.series_uid))
    if series is not None:
        if series.study_id != study.id:
            raise _series_elsewhere(parsed.series_uid)
        return series, False
    ds = parsed.dataset
    series = ImagingSeries(study_id=study.id, series_instance_uid=parsed.series_uid,
                           modality=_text(ds, "Modality", 16), series_number=_int(ds.get("SeriesNumber")),
                           description=_text(ds, "SeriesDescription", 200), body_part=_text(ds, "BodyPartExamined", 64),
                           number_of_instances=0)
    try:
        with db.begin_nested():
            db.add(series)
    except IntegrityError:
        found = db.scalar(select(ImagingSeries).where(ImagingSeries.series_instance_uid == parsed.series_uid))
        if found is None:
            raise
        return found, False
    return series, True


def _series_elsewhere(series_uid: str) -> InvalidInput:
    return InvalidInput(f"序列 {series_uid} 属于另一个检查 / series {series_uid} belongs to another study",
                        code="series_in_other_study")


def _on_new_study(db: Session, *, study: ImagingStudy, ds: Dataset, modality: Modality | None,
                  organisation_id: int | None, received_via: str, calling_ae_title: str,
                  by_user: User | None) -> None:
    """Once per study: match the patient, audit the arrival, route it to a reading centre."""
    result = match_patient(db, patient=dicom_patient(ds), organisation_id=organisation_id)
    study.patient_id = result.patient_id
    study.patient_match = PatientMatch.MATCHED if result.patient_id else PatientMatch.UNMATCHED
    study.match_note = result.note[:300]
    db.flush()
    audit.record(db, actor=_actor(by_user, calling_ae_title), action="imaging.ingest",
                 patient_id=result.patient_id, resource=f"imaging_study:{study.id}",
                 detail={"study_instance_uid": study.study_instance_uid, "received_via": received_via,
                         "calling_ae_title": calling_ae_title, "organisation_id": organisation_id,
                         "patient_match": str(study.patient_match), "matched_by": result.how})
    modality_type = (modality.modality_type if modality else "") or _text(ds, "Modality", 16)
    route_study(db, study=study, modality_type=modality_type, organisation_id=organisation_id, requested_by=by_user)


def _actor(user: User | None, calling_ae_title: str) -> audit.Actor:
    if user is not None:
        return audit.Actor(user_id=user.id, username=user.username, role=str(user.role),
                           organisation_id=user.organisation_id)
    return audit.Actor(username=f"dicom:{calling_ae_title}" if calling_ae_title else "system")


def record_refusal(db: Session, *, reason: str, received_via: str, calling_ae_title: str = "",
                   sop_instance_uid: str = "", by_user: User | None = None, client_address: str = "") -> None:
    """Audit one refused instance (bad data, conflict) in the caller's transaction."""
    actor = _actor(by_user, calling_ae_title)
    if client_address:
        actor = audit.Actor(user_id=actor.user_id, username=actor.username, role=actor.role,
                            organisation_id=actor.organisation_id, client_address=client_address)
    audit.record(db, actor=actor, action="imaging.ingest", outcome="refused", resource="imaging_instance",
                 detail={"reason": reason[:300], "received_via": received_via, "calling_ae_title": calling_ae_title,
                         "sop_instance_uid": sop_instance_uid[:64]})


# --- files written by a transaction that did not commit are removed --------------------------------

@sa_event.listens_for(Session, "after_commit")
def _files_kept(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the outer transaction may still roll back
        return
    session.info.pop(_PENDING, None)


@sa_event.listens_for(Session, "after_transaction_end")
def _files_dropped(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None or transaction.nested:
        return
    for backend, key in session.info.pop(_PENDING, None) or []:
        try:
            backend.delete(key)
        except Exception:  # noqa: BLE001 - an orphan file is logged, never raised over the caller's error
            log.exception("could not remove %s after its transaction rolled back", key)


# --- reading the dataset ----------------------------------------------------------------------------

def dicom_patient(ds: Dataset) -> DicomPatient:
    other: list[str] = []
    for item in ds.get("OtherPatientIDsSequence", []) or []:
        value = str(item.get("PatientID", "") or "").strip()
        if value:
            other.append(value)
    raw_other = ds.get("OtherPatientIDs")
    if raw_other:
        other.extend(str(v).strip() for v in (raw_other if isinstance(raw_other, list | tuple) else [raw_other]))
    return DicomPatient(patient_id=_text(ds, "PatientID", 64), other_ids=tuple(o for o in other if o),
                        name=_matching_name(ds), birth_date=_date(ds.get("PatientBirthDate")), sex=_sex(ds))


def _matching_name(ds: Dataset) -> str:
    try:
        pn = ds.get("PatientName")
        if not pn:
            return ""
        return name_for_matching(str(pn.alphabetic or ""), str(pn.ideographic or ""), str(pn.phonetic or ""))
    except Exception:  # noqa: BLE001 - an undecodable name is no name
        return ""


def _person_name(ds: Dataset) -> str:
    try:
        return str(ds.get("PatientName") or "").strip()
    except Exception:  # noqa: BLE001
        return ""


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed optional element is left out of the index
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or getattr(value, "VM", 1) > 1:
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:limit]


def _sex(ds: Dataset) -> str:
    value = _text(ds, "PatientSex", 1).upper()
    return value if value in ("M", "F", "O") else ""


def _date(value: object) -> date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _int(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _float(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None  # type: ignore[index,arg-type]
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _floats(value: object, count: int) -> list[float] | None:
    try:
        values = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def _functional(ds: Dataset, sequence: str, keyword: str) -> object:
    """A value from the shared functional groups of an enhanced multi-frame object."""
    if _SHARED_GROUPS not in ds and _PER_FRAME_GROUPS not in ds:
        return None
    try:
        for group in ds.get("SharedFunctionalGroupsSequence", []) or []:
            for item in group.get(sequence, []) or []:
                if keyword in item:
                    return item.get(keyword)
        for group in (ds.get("PerFrameFunctionalGroupsSequence", []) or [])[:1]:
            for item in group.get(sequence, []) or []:
                if keyword in item:
                    return item.get(keyword)
    except Exception:  # noqa: BLE001
        return None
    return None


def _ascii(ds: Dataset, keyword: str) -> str:
    """A text value (UI, CS, DS, IS ...) straight from the bytes read, skipping pydicom's value classes.

    Those validate every value with regular expressions, which for the dozen values read per instance
    cost about as much as the database work; strings are the same bytes in every transfer syntax.
    """
    try:
        element = ds.get_item(_TAGS[keyword])
        if element is None:
            return ""
        if isinstance(element, RawDataElement):
            raw = element.value
            if raw is None:
                return ""
            return bytes(raw).decode("ascii", "replace").strip(" \x00")
        value = element.value
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v) for v in value)
        return str(value if value is not None else "").strip(" \x00")
    except Exception:  # noqa: BLE001 - a malformed optional element is as good as missing
        return ""


def _ushort(ds: Dataset, keyword: str) -> int | None:
    """An unsigned short (US) such as Rows, from its two bytes; pydicom's conversion is the slow way round."""
    tag = _TAGS[keyword]
    try:
        element = ds.get_item(tag)
        if element is None:
            return None
        if isinstance(element, RawDataElement):
            raw = element.value
            if raw is None or len(raw) != 2:
                return _int(ds[tag].value)  # multi-valued or odd: let pydicom decide
            return int.from_bytes(raw, "little" if ds.original_encoding[1] is not False else "big")
        return _int(element.value)
    except Exception:  # noqa: BLE001 - a malformed optional element is as good as missing
        return None


def _numbers(ds: Dataset, keyword: str) -> list[float] | None:
    text = _ascii(ds, keyword)
    if not text:
        return None
    try:
        return [float(part) for part in text.split("\\")]
    except ValueError:
        return None


def _first(ds: Dataset, keyword: str, sequence: str = "") -> float | None:
    values = _numbers(ds, keyword)
    if values:
        return values[0]
    return _float(_functional(ds, sequence, keyword)) if sequence else None


def _vector(ds: Dataset, keyword: str, count: int, sequence: str = "") -> list[float] | None:
    values = _numbers(ds, keyword)
    if values is None and sequence:
        found = _functional(ds, sequence, keyword)
        values = _floats(found, count) if found else None
    return values if values is not None and len(values) == count else None


def summarise(ds: Dataset) -> dict[str, Any]:
    """The tags the viewer and WADO-RS metadata need, as plain JSON (see the module docstring)."""

    def get(keyword: str) -> object:
        try:
            return ds.get(keyword)
        except Exception:  # noqa: BLE001
            return None

    center = _first(ds, "WindowCenter", "FrameVOILUTSequence")
    width = _first(ds, "WindowWidth", "FrameVOILUTSequence")
    slope = _first(ds, "RescaleSlope", "PixelValueTransformationSequence")
    intercept = _first(ds, "RescaleIntercept", "PixelValueTransformationSequence")
    spacing = _vector(ds, "PixelSpacing", 2, "PixelMeasuresSequence") or _vector(ds, "ImagerPixelSpacing", 2)
    position = _vector(ds, "ImagePositionPatient", 3, "PlanePositionSequence")
    orientation = _vector(ds, "ImageOrientationPatient", 6, "PlaneOrientationSequence")
    has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
    return {
        "window_center": center,
        "window_width": width,
        "rescale_slope": slope if slope is not None else (1.0 if has_pixels else None),
        "rescale_intercept": intercept if intercept is not None else (0.0 if has_pixels else None),
        "pixel_spacing": spacing,
        "photometric_interpretation": _ascii(ds, "PhotometricInterpretation"),
        "image_position": position,
        "image_orientation": orientation,
        "slice_location": _first(ds, "SliceLocation"),
        "number_of_frames": _int(_ascii(ds, "NumberOfFrames")) or 1,
        "frame_time_ms": _first(ds, "FrameTime"),
        "bits_allocated": _ushort(ds, "BitsAllocated"),
        "bits_stored": _ushort(ds, "BitsStored"),
        "pixel_representation": _ushort(ds, "PixelRepresentation"),
        "samples_per_pixel": _ushort(ds, "SamplesPerPixel"),
        "modality": _ascii(ds, "Modality"),
        "lossy": _ascii(ds, "LossyImageCompression") == "01",
        "has_pixels": has_pixels,
    }
