"""The DICOM receiver: C-ECHO and C-STORE from registered modalities.

Each C-STORE is ingested (imaging/service.py) in a transaction of its own and acknowledged with
0x0000 only after that transaction committed: the file is fsync'd by the storage backend and the
index row is durable, so a device may delete its copy. Bad data gets a failure status and leaves
nothing behind; a re-sent instance gets 0x0000 again (idempotent).

pynetdicom does the protocol work that is easy to get wrong: decoding and encoding the association
PDUs (A-ASSOCIATE-RQ/AC/RJ), presentation context negotiation and the standard's UIDs. Its own
acceptor runs polling threads per association that sleep a millisecond between looks; with a C-STORE
handler that did nothing it managed 25-120 instances/s here where Orthanc took 75-350, so no work
behind it could have caught up. So each association is served here by one thread doing blocking
reads: read a PDU, collect the message's fragments, ingest, answer. A P-DATA PDU is a few
length-prefixed fragments (PS3.8 9.3.5), which is all that loop parses itself.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor
from sqlalchemy import Connection, Engine, select
from sqlalchemy.orm import Session, sessionmaker

from healthrelay.core.errors import Conflict, DomainError, InvalidInput
from healthrelay.imaging.models import Modality
from healthrelay.imaging.service import (
    ACCEPTED_SOP_CLASSES,
    ECG_WAVEFORM_SOP_CLASSES,
    ingest,
    ingest_ecg,
    record_refusal,
)

log = logging.getLogger("healthrelay.imaging.scp")

VERIFICATION = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_VERSION = "HEALTHRELAY_1"
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEGLSNearLossless,
    JPEG2000Lossless, JPEG2000, RLELossless,
]
# Largest PDU we accept (announced in the A-ASSOCIATE-AC): fewer, larger reads for a 0.5 MB slice.
MAX_PDU = 1024 * 1024
MAX_ASSOCIATIONS = 20
NETWORK_TIMEOUT = 60.0  # seconds of silence before an association is dropped
ACSE_TIMEOUT = 30.0  # seconds to wait for the A-ASSOCIATE-RQ after the connection opens
MAX_DATASET_BYTES = 2 * 1024 * 1024 * 1024

# DIMSE command fields (PS3.7 E.1) and C-STORE statuses (PS3.4 B.2.3).
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
NO_DATASET = 0x0101
STATUS_MISMATCH = 0xA900  # data set does not match SOP class
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_CONFLICT = 0xC001  # our code in the "cannot understand" range: same UID, different content
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_UNRECOGNISED_OPERATION = 0x0211

_STATUS_BY_CODE = {
    "not_dicom": STATUS_CANNOT_UNDERSTAND,
    "truncated": STATUS_CANNOT_UNDERSTAND,
    "missing_uid": STATUS_MISMATCH,
    "unsupported_sop_class": STATUS_MISMATCH,
    "invalid_image": STATUS_MISMATCH,
    "series_in_other_study": STATUS_MISMATCH,
}

# A-ASSOCIATE-RJ (result, source, reason) and A-ABORT reasons (PS3.8 9.3.4, 9.3.8).
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service user: calling AE title not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service user: called AE title not recognised
REJECT_CONTEXT_NAME = (0x01, 0x01, 0x02)  # permanent, service user: application context not supported
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, presentation: local limit exceeded
REJECT_CONGESTION = (0x02, 0x03, 0x01)  # transient, presentation: temporary congestion
A_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"


class AssociationAborted(Exception):
    """The peer went away or broke the protocol: the association ends, nothing half-done is kept."""


@dataclass
class _Message:
    """One DIMSE message being received: its command set and data set fragments."""

    context_id: int
    command: bytearray = field(default_factory=bytearray)
    command_set: dict[int, int | str] | None = None
    fragments: list[bytes] = field(default_factory=list)
    size: int = 0


class _Association:
    """One TCP connection from a modality, served start to end by the thread that accepted it."""

    def __init__(self, sock: socket.socket, address: str, receiver: Receiver) -> None:
        self.sock = sock
        self.address = address
        self.receiver = receiver
        self.calling_ae = ""
        self.modality: Modality | None = None
        # One database connection and session for the whole association: no pool checkout (nor PostgreSQL's
        # pre-ping round trip) per instance; each instance still commits in a transaction of its own.
        self.connection: Connection | None = None
        self.session: Session | None = None
        self.contexts: dict[int, PresentationContext] = {}
        self.peer_max_pdu = 0

    # --- transport -------------------------------------------------------------------------------

    def _recv_exact(self, size: int) -> bytes:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = self.sock.recv_into(view[got:], size - got)
            if n == 0:
                raise AssociationAborted("connection closed by the peer")
            got += n
        return bytes(buffer)

    def _read_pdu(self) -> tuple[int, bytes]:
        header = self._recv_exact(6)
        kind, length = header[0], int.from_bytes(header[2:6], "big")
        if length > MAX_PDU + 1024 and kind != 0x01:
            raise AssociationAborted(f"PDU of {length} bytes exceeds the {MAX_PDU} we announced")
        if kind == 0x01 and length > 64 * 1024:
            raise AssociationAborted("oversized A-ASSOCIATE-RQ")
        return kind, header + self._recv_exact(length)

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _abort(self, reason: int = 0x00) -> None:
        """A-ABORT from the service provider (source 2) with a reason (PS3.8 9.3.8)."""
        with contextlib.suppress(OSError):
            self._send(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02" + bytes([reason]))

    # --- association -------------------------------------------------------------------------------

    def serve(self) -> None:
        try:
            self.sock.settimeout(ACSE_TIMEOUT)
            kind, pdu = self._read_pdu()
            if kind != 0x01:
                self._abort(0x02)  # unexpected PDU
                return
            if not self._negotiate(pdu):
                return
            self.sock.settimeout(NETWORK_TIMEOUT)
            self._run()
        except (AssociationAborted, TimeoutError, OSError) as exc:
            log.info("association from %s (%s) ended: %s", self.calling_ae or "?", self.address, exc)
        except Exception:  # noqa: BLE001 - a broken association is logged, never takes the receiver down
            log.exception("association from %s (%s) failed", self.calling_ae or "?", self.address)
            self._abort()
        finally:
            self._drop_connection()

    def _drop_connection(self) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):
                self.session.close()
            self.session = None
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.close()
            self.connection = None

    def _negotiate(self, pdu: bytes) -> bool:
        rq_pdu = A_ASSOCIATE_RQ()
        try:
            rq_pdu.decode(pdu)
            rq = rq_pdu.to_primitive()
        except Exception:  # noqa: BLE001 - a malformed request: abort (invalid PDU parameter value)
            log.warning("malformed A-ASSOCIATE-RQ from %s", self.address)
            self._abort(0x06)
            return False
        self.calling_ae = str(rq.calling_ae_title or "").strip()
        called = str(rq.called_ae_title or "").strip()
        if str(rq.application_context_name) != APPLICATION_CONTEXT:
            return self._reject(rq, REJECT_CONTEXT_NAME, "application context not supported")
        if called != self.receiver.ae_title:
            return self._reject(rq, REJECT_CALLED_AE, f"called AE title {called!r} is not ours")
        try:
            self.modality = self.receiver.modality_for(self.calling_ae)
        except Exception:  # noqa: BLE001 - the database is down: refuse for now, the device retries
            log.exception("could not look up calling AE title %r", self.calling_ae)
            return self._reject(rq, REJECT_CONGESTION, "database unavailable")
        if self.modality is None:
            return self._reject(rq, REJECT_CALLING_AE, f"calling AE title {self.calling_ae!r} not recognised")
        if not self.receiver.admit(self):
            return self._reject(rq, REJECT_BUSY, "too many associations")

        roles: dict[str, tuple[bool | None, bool | None]] = {}
        for item in rq.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
            elif isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
                roles[str(item.sop_class_uid)] = (item.scu_role, item.scp_role)
        results, role_items = negotiate_as_acceptor(rq.presentation_context_definition_list,
                                                    self.receiver.supported_contexts, roles or None)
        self.contexts = {int(cx.context_id): cx for cx in results if cx.result == 0x00}  # type: ignore[arg-type]

        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = MAX_PDU
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = IMPLEMENTATION_VERSION
        ac.user_information = [max_length, class_uid, version, *role_items]
        ac_pdu = A_ASSOCIATE_AC()
        ac_pdu.from_primitive(ac)
        self._send(ac_pdu.encode())
        log.info("association from %s (%s) accepted: %d presentation contexts", self.calling_ae, self.address,
                 len(self.contexts))
        return True

    def _reject(self, rq: A_ASSOCIATE, reason: tuple[int, int, int], why: str) -> bool:
        log.warning("association from %s refused: %s", self.address, why)
        rj = A_ASSOCIATE()
        rj.result, rj.result_source, rj.diagnostic = reason
        rj_pdu = A_ASSOCIATE_RJ()
        rj_pdu.from_primitive(rj)
        with contextlib.suppress(OSError):
            self._send(rj_pdu.encode())
        return False

    def _run(self) -> None:
        message: _Message | None = None
        while True:
            kind, pdu = self._read_pdu()
            if kind == 0x04:  # P-DATA-TF
                message = self._p_data(pdu, message)
            elif kind == 0x05:  # A-RELEASE-RQ
                if message is not None:
                    log.warning("A-RELEASE-RQ from %s in the middle of a message", self.calling_ae)
                self._send(A_RELEASE_RP)
                log.info("association from %s released", self.calling_ae)
                return
            elif kind == 0x07:  # A-ABORT
                raise AssociationAborted("aborted by the peer")
            else:
                self._abort(0x02)  # unexpected PDU
                raise AssociationAborted(f"unexpected PDU type {kind:#04x}")

    def _p_data(self, pdu: bytes, message: _Message | None) -> _Message | None:
        """Collect the fragments (PDVs) of a P-DATA-TF; handle each message once it is complete."""
        view = memoryview(pdu)
        offset, end = 6, len(pdu)
        while offset < end:
            if offset + 6 > end:
                raise AssociationAborted("malformed P-DATA-TF")
            item_length = int.from_bytes(view[offset:offset + 4], "big")
            context_id, control = view[offset + 4], view[offset + 5]
            fragment = view[offset + 6:offset + 4 + item_length]
            if item_length < 2 or offset + 4 + item_length > end:
                raise AssociationAborted("malformed presentation data value")
            offset += 4 + item_length
            if context_id not in self.contexts:
                self._abort(0x06)
                raise AssociationAborted(f"presentation context {context_id} was not accepted")
            if message is None:
                message = _Message(context_id=context_id)
            elif message.context_id != context_id:
                self._abort(0x06)
                raise AssociationAborted("fragments of two messages interleaved")
            last = bool(control & 0x02)
            if control & 0x01:  # command fragment
                message.command += fragment
                if last:
                    message.command_set = parse_command(bytes(message.command))
                    if message.command_set.get(_DATASET_TYPE, NO_DATASET) == NO_DATASET:
                        self._handle(message)
                        message = None
            else:  # data set fragment
                if message.command_set is None:
                    self._abort(0x06)
                    raise AssociationAborted("data set before its command")
                message.fragments.append(bytes(fragment))
                message.size += len(fragment)
                if message.size > MAX_DATASET_BYTES:
                    self._abort(0x00)
                    raise AssociationAborted("data set too large")
                if last:
                    self._handle(message)
                    message = None
        return message

    # --- DIMSE ---------------------------------------------------------------------------------------

    def _handle(self, message: _Message) -> None:
        command = message.command_set
        assert command is not None
        field_ = int(command.get(_COMMAND_FIELD, 0))
        message_id = int(command.get(_MESSAGE_ID, 0))
        sop_class = str(command.get(_SOP_CLASS, ""))
        if field_ == C_ECHO_RQ:
            self._respond(message.context_id, C_ECHO_RSP, message_id, sop_class, 0x0000)
            return
        if field_ != C_STORE_RQ:
            self._respond(message.context_id, field_ | 0x8000, message_id, sop_class, STATUS_UNRECOGNISED_OPERATION)
            return
        sop_instance = str(command.get(_SOP_INSTANCE, ""))
        context = self.contexts[message.context_id]
        data = b"".join((part10_header(sop_class, sop_instance, str(context.transfer_syntax[0])), *message.fragments))
        message.fragments.clear()
        if self.session is None:
            self.connection = self.receiver.connect()
            bind = {"bind": self.connection} if self.connection is not None else {}
            self.session = self.receiver.make_session(**bind)
        status, comment = self.receiver.store(data, db=self.session, calling_ae=self.calling_ae,
                                              modality=self.modality, address=self.address,
                                              sop_instance_uid=sop_instance, sop_class_uid=sop_class)
        if status == STATUS_OUT_OF_RESOURCES:
            self._drop_connection()  # it may be what broke: the next instance gets a fresh one
        self._respond(message.context_id, C_STORE_RSP, message_id, sop_class, status,
                      sop_instance=sop_instance, comment=comment)

    def _respond(self, context_id: int, command_field: int, message_id: int, sop_class: str, status: int, *,
                 sop_instance: str = "", comment: str = "") -> None:
        encoded = encode_response(command_field, message_id, sop_class, status, sop_instance=sop_instance,
                                  comment=comment)
        limit = self.peer_max_pdu - 6 if self.peer_max_pdu > 6 else len(encoded)
        chunks = [encoded[i:i + limit] for i in range(0, len(encoded), limit)]
        out = bytearray()
        for i, chunk in enumerate(chunks):
            control = 0x03 if i == len(chunks) - 1 else 0x01
            item = bytes([context_id, control]) + chunk
            out += b"\x04\x00" + (len(item) + 4).to_bytes(4, "big") + len(item).to_bytes(4, "big") + item
        self._send(bytes(out))


# --- the few DIMSE and Part 10 encodings the loop needs (pydicom's general ones cost ~1 ms each) -----------

_COMMAND_FIELD, _MESSAGE_ID, _SOP_CLASS, _SOP_INSTANCE, _DATASET_TYPE = 0x00000100, 0x00000110, 0x00000002, \
    0x00001000, 0x00000800
_US_TAGS = {_COMMAND_FIELD, _MESSAGE_ID, _DATASET_TYPE}
_UI_TAGS = {_SOP_CLASS, _SOP_INSTANCE}


def parse_command(data: bytes) -> dict[int, int | str]:
    """The elements we use from a command set (implicit VR little endian, PS3.7 6.3.1)."""
    found: dict[int, int | str] = {}
    offset = 0
    while offset + 8 <= len(data):
        group, element = int.from_bytes(data[offset:offset + 2], "little"), int.from_bytes(data[offset + 2:offset + 4],
                                                                                            "little")
        length = int.from_bytes(data[offset + 4:offset + 8], "little")
        value = data[offset + 8:offset + 8 + length]
        if len(value) < length:
            raise AssociationAborted("truncated command set")
        tag = (group << 16) | element
        if tag in _US_TAGS and length >= 2:
            found[tag] = int.from_bytes(value[:2], "little")
        elif tag in _UI_TAGS:
            found[tag] = value.rstrip(b"\x00 ").decode("ascii", "replace")
        offset += 8 + length
    return found


def _implicit(tag: int, value: bytes) -> bytes:
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little") + len(value).to_bytes(4, "little") \
        + value


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def encode_response(command_field: int, message_id: int, sop_class: str, status: int, *, sop_instance: str = "",
                    comment: str = "") -> bytes:
    """A C-ECHO/C-STORE response command set with its group length (elements in tag order)."""
    body = _implicit(0x00000002, _even(sop_class.encode("ascii"), b"\x00"))
    body += _implicit(0x00000100, command_field.to_bytes(2, "little"))
    body += _implicit(0x00000120, message_id.to_bytes(2, "little"))
    body += _implicit(0x00000800, NO_DATASET.to_bytes(2, "little"))
    body += _implicit(0x00000900, status.to_bytes(2, "little"))
    if comment:
        body += _implicit(0x00000902, _even(comment.encode("ascii", "replace")[:64], b" "))
    if sop_instance:
        body += _implicit(0x00001000, _even(sop_instance.encode("ascii"), b"\x00"))
    return _implicit(0x00000000, len(body).to_bytes(4, "little")) + body


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    head = b"\x02\x00" + element.to_bytes(2, "little") + vr
    if vr == b"OB":
        return head + b"\x00\x00" + len(value).to_bytes(4, "little") + value
    return head + len(value).to_bytes(2, "little") + value


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble and file meta (explicit VR little endian, PS3.10 7.1) for a data set kept exactly as received."""
    group = _explicit(0x0001, b"OB", b"\x00\x01")
    group += _explicit(0x0002, b"UI", _even(sop_class.encode("ascii"), b"\x00"))
    group += _explicit(0x0003, b"UI", _even(sop_instance.encode("ascii"), b"\x00"))
    group += _explicit(0x0010, b"UI", _even(transfer_syntax.encode("ascii"), b"\x00"))
    group += _explicit(0x0012, b"UI", _even(str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii"), b"\x00"))
    group += _explicit(0x0013, b"SH", _even(IMPLEMENTATION_VERSION.encode("ascii"), b" "))
    return b"\x00" * 128 + b"DICM" + _explicit(0x0000, b"UL", len(group).to_bytes(4, "little")) + group


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def setup(self) -> None:
        with contextlib.suppress(OSError):  # Nagle would hold every response back ~40 ms
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        association = _Association(self.request, f"{self.client_address[0]}:{self.client_address[1]}",
                                   self.server.receiver)
        try:
            association.serve()
        finally:
            self.server.receiver.leave(association)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("DICOM connection from %s failed", client_address)


@dataclass
class Receiver:
    """A running receiver: `port` is the bound port (useful when started on port 0)."""

    make_session: sessionmaker[Session]
    host: str
    port: int
    ae_title: str
    supported_contexts: list[PresentationContext]
    server: _Server | None = None
    thread: threading.Thread | None = None
    _active: set[_Association] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def shutdown(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        with self._lock:
            active = list(self._active)
        for association in active:
            with contextlib.suppress(OSError):
                association.sock.shutdown(socket.SHUT_RDWR)
        if self.thread is not None:
            self.thread.join(timeout=10)

    def wait(self) -> None:
        """Block until the receiver stops (Ctrl-C in `healthrelay dicom`)."""
        while self.thread is not None and self.thread.is_alive():
            self.thread.join(timeout=0.5)

    # --- called by associations -------------------------------------------------------------------

    def admit(self, association: _Association) -> bool:
        with self._lock:
            if len(self._active) >= MAX_ASSOCIATIONS:
                return False
            self._active.add(association)
            return True

    def leave(self, association: _Association) -> None:
        with self._lock:
            self._active.discard(association)

    def modality_for(self, ae_title: str) -> Modality | None:
        """The active modality registered with this calling AE title (read at each association)."""
        with self.make_session() as db:
            return db.scalar(select(Modality).where(Modality.ae_title == ae_title, Modality.is_active.is_(True)))

    def connect(self) -> Connection | None:
        bind = self.make_session.kw.get("bind")
        return bind.connect() if isinstance(bind, Engine) else None

    def store(self, data: bytes, *, db: Session, calling_ae: str, modality: Modality | None,
              address: str, sop_instance_uid: str, sop_class_uid: str = "") -> tuple[int, str]:
        """Ingest and commit; the (status, error comment) to answer the C-STORE with. ECG waveforms go to the
        ECG centre instead of the image index."""
        try:
            if sop_class_uid in ECG_WAVEFORM_SOP_CLASSES:
                ingest_ecg(db, data=data, received_via="dimse", calling_ae_title=calling_ae,
                           organisation_id=modality.organisation_id if modality else None)
            else:
                ingest(db, data=data, received_via="dimse", calling_ae_title=calling_ae, modality=modality)
            db.commit()
            return 0x0000, ""
        except DomainError as exc:
            db.rollback()
            status = _STATUS_BY_CODE.get(exc.code, STATUS_CANNOT_UNDERSTAND)
            if isinstance(exc, Conflict):
                status = STATUS_CONFLICT
            elif not isinstance(exc, InvalidInput):
                status = STATUS_CANNOT_UNDERSTAND
            log.warning("C-STORE from %s refused: %s", calling_ae, exc.message)
            self._audit_refusal(db, exc.message, calling_ae=calling_ae, address=address,
                                sop_instance_uid=sop_instance_uid)
            comment = "already stored with different content" if status == STATUS_CONFLICT else exc.message
            return status, _error_comment(comment)
        except Exception:  # noqa: BLE001 - never crash the association; the device may retry
            db.rollback()
            log.exception("C-STORE from %s failed", calling_ae)
            return STATUS_OUT_OF_RESOURCES, "internal error, try again"
        finally:
            db.expunge_all()  # the session serves the next instance: nothing read now may go stale in it

    @staticmethod
    def _audit_refusal(db: Session, message: str, *, calling_ae: str, address: str, sop_instance_uid: str) -> None:
        try:
            record_refusal(db, reason=message, received_via="dimse", calling_ae_title=calling_ae,
                           sop_instance_uid=sop_instance_uid, client_address=address.rsplit(":", 1)[0])
            db.commit()
        except Exception:  # noqa: BLE001 - the refusal itself was answered; a lost audit row is logged
            db.rollback()
            log.exception("could not audit a refused C-STORE from %s", calling_ae)


def _error_comment(message: str) -> str:
    """Error Comment is LO: 64 characters of the English half of our bilingual message."""
    english = message.split(" / ", 1)[-1]
    return english.encode("ascii", "replace").decode()[:64]


def supported_contexts() -> list[PresentationContext]:
    contexts = [build_context(VERIFICATION, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    contexts += [build_context(uid, TRANSFER_SYNTAXES) for uid in ACCEPTED_SOP_CLASSES]
    for i, cx in enumerate(contexts):
        cx.context_id = 2 * i + 1
    return contexts


def start_receiver(sessionmaker: sessionmaker[Session], *, host: str, port: int, ae_title: str) -> Receiver:
    """Listen for associations (a thread per association); returns once the socket is bound."""
    from healthrelay.imaging.matching import warm_up

    warm_up()  # the first study should not pay for loading the pinyin tables
    receiver = Receiver(make_session=sessionmaker, host=host, port=port, ae_title=ae_title.strip(),
                        supported_contexts=supported_contexts())
    server = _Server((host, port), _Handler)
    server.receiver = receiver
    receiver.server = server
    receiver.port = int(server.server_address[1])
    receiver.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name=f"dicom-receiver-{ae_title}", daemon=True)
    receiver.thread.start()
    log.info("DICOM receiver %s listening on %s:%s", ae_title, host, receiver.port)
    return receiver
