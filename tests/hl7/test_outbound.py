"""Signed reports go back to the inviting member's own system as ORU^R01 over MLLP: a real MLLP peer on
127.0.0.1 (python-hl7's asyncio server) receives them in UTF-8 and in GB 18030 with the Chinese text intact;
a peer that is down is tried again later, one answering AE is retried up to the bound and then the message
waits as failed on /admin/hl7/outbound for "retry now"; nothing acknowledged is ever sent twice."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import hl7
import pytest
from hl7.mllp import start_hl7_server
from hl7apy.parser import parse_message
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role
from healthrelay.audit.models import AuditEvent
from healthrelay.core import timers
from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.errors import NotFound
from healthrelay.core.timers import Timer
from healthrelay.hl7 import outbound, outbound_pages
from healthrelay.hl7.models import Hl7Destination, Hl7Outbound
from healthrelay.patients.models import IdentifierType, PatientIdentifier
from healthrelay.teleconsult import reports, service
from healthrelay.teleconsult.models import ConsultRequest
from tests.conftest import free_port
from tests.notifications.conftest import login
from tests.teleconsult.conftest import TeleWorld, build_world, make_request, staff

RESIDENT_ID = "42010219560308123X"
# Delimiters and an escape character inside the text: they must survive as escapes, not split fields.
REPORT = reports.ReportInput(
    technique="头颅 CT 平扫 / non-contrast head CT",
    findings="左侧基底节区见 12×8 mm 低密度灶|边界清\n脑室系统未见扩大 ^ 中线结构居中 & 无移位 ~ C:\\片",
    impression="左侧基底节区腔隙性脑梗死 / lacunar infarct, left basal ganglia",
    recognition_scope="county")


class Peer:
    """A member hospital's HIS listening on MLLP: records what arrives, answers AA (or what `answer` says)."""

    def __init__(self, *, port: int = 0, codec: str = "utf-8", answer: str = "AA") -> None:
        self.port, self.codec, self.answer = port, codec, answer
        self.received: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(start_hl7_server(self._handle, "127.0.0.1", self.port))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                block = await reader.readblock()  # type: ignore[attr-defined]
                self.received.append(block)
                control = str(hl7.parse(block.decode(self.codec)).segment("MSH")(10))
                text = "患者主索引未找到 / unknown patient" if self.answer != "AA" else ""
                ack = (f"MSH|^~\\&|HIS|TOWN|HEALTHRELAY|HEALTHRELAY|20261204120000||ACK^R01|ACK{len(self.received)}"
                       f"|P|2.5\rMSA|{self.answer}|{control}|{text}\r")
                writer.writeblock(ack.encode(self.codec))  # type: ignore[attr-defined]
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> Peer:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def messages(self) -> list[hl7.Message]:
        return [hl7.parse(b.decode(self.codec)) for b in self.received]


@pytest.fixture
def tele(db: Session) -> TeleWorld:
    world = build_world(db)
    db.add_all([PatientIdentifier(patient_id=world.patient.id, type=IdentifierType.RESIDENT_ID, value=RESIDENT_ID),
                PatientIdentifier(patient_id=world.patient.id, type=IdentifierType.MEDICAL_RECORD, value="MZ-000731",
                                  issuer_organisation_id=world.town.id)])
    db.commit()
    return world


def destination(db: Session, tele: TeleWorld, *, port: int, charset: str = "UTF-8") -> Hl7Destination:
    row = Hl7Destination(organisation_id=tele.town.id, host="127.0.0.1", port=port, receiving_application="HIS",
                         receiving_facility="DONGSHAN_WSY", charset=charset, is_active=True, created_at=utcnow())
    db.add(row)
    db.commit()
    return row


def signed(db: Session, tele: TeleWorld, *, by: object | None = None) -> ConsultRequest:
    """A request claimed by the senior (or `by`) and signed with REPORT; committed, so the timer can run."""
    request = make_request(db, tele)
    reader = by or tele.senior
    service.claim(db, by=reader, request_id=request.id)  # type: ignore[arg-type]
    reports.sign(db, request_id=request.id, by=reader, data=REPORT)  # type: ignore[arg-type]
    db.commit()
    return request


def queued(db: Session) -> list[Hl7Outbound]:
    db.expire_all()
    return list(db.execute(select(Hl7Outbound).order_by(Hl7Outbound.id)).scalars())


def run_timers(db: Session, *, due_now: bool = True, kinds: tuple[str, ...] = (outbound.SEND_KIND,)) -> None:
    """Run due timers like a worker; `due_now` first brings the pending ones of `kinds` forward (time travel)."""
    for kind in kinds if due_now else ():
        db.execute(update(Timer).where(Timer.kind == kind, Timer.fired_at.is_(None))
                   .values(due_at=utcnow() - timedelta(seconds=1)))
        db.commit()
        timers.run_due(get_sessionmaker(), runner="test")
    if not due_now:
        timers.run_due(get_sessionmaker(), runner="test")
    db.expire_all()


def obx_text(message: hl7.Message, section: str) -> list[str]:
    return [message.unescape(str(s(5))) for s in message.segments("OBX") if str(s(3)).startswith(section + "^")]


@pytest.mark.parametrize("charset,codec,msh18", [("UTF-8", "utf-8", "UNICODE UTF-8"),
                                                 ("GB18030", "gb18030", "GB 18030-2000"),
                                                 ("gbk", "gb18030", "GB 18030-2000")])
def test_a_signed_report_reaches_the_members_system_with_chinese_intact(db: Session, tele: TeleWorld, charset: str,
                                                                        codec: str, msh18: str) -> None:
    with Peer(codec=codec) as peer:
        destination(db, tele, port=peer.port, charset=charset)
        request = signed(db, tele)
        [row] = queued(db)
        assert row.state == "pending" and row.attempts == 0 and peer.received == []  # sent after commit, by timer
        run_timers(db, due_now=False)
        [row] = queued(db)
        assert row.state == "sent" and row.ack_code == "AA" and row.attempts == 1 and row.sent_at is not None
        [message] = peer.messages()
        if codec != "utf-8":
            with pytest.raises(UnicodeDecodeError):
                peer.received[0].decode("utf-8")
        msh = message.segment("MSH")
        assert [str(msh(i)) for i in (3, 4, 5, 6, 10, 18)] == [
            "HEALTHRELAY", "HEALTHRELAY", "HIS", "DONGSHAN_WSY", row.control_id, msh18]
        assert str(msh(9)).startswith("ORU^R01")
        pid = message.segment("PID")
        assert RESIDENT_ID in str(pid(3)) and "MZ-000731" in str(pid(3)) and str(pid(5)) == tele.patient.name
        obr = message.segment("OBR")
        assert str(obr(2)) == str(obr(3)) == request.number and str(obr(25)) == "F"
        assert str(obr(4)) == "IMAGING^远程影像诊断^L"  # no study arrived for it: the kind of reading asked for
        # Every line of the findings comes back exactly, delimiters included (escaped on the wire).
        assert obx_text(message, "FINDINGS") == REPORT.findings.splitlines()
        assert "\\F\\" in peer.received[0].decode(codec) and "\\S\\" in peer.received[0].decode(codec)
        assert obx_text(message, "IMPRESSION") == [REPORT.impression]
        assert obx_text(message, "HR") == [reports.hr_mark("county")]
        assert obx_text(message, "SIGNER")[0].startswith("钱医师")
        # hl7apy reads it as an ORU^R01 of v2.5 with the same findings.
        parsed = parse_message(peer.received[0].decode(codec), find_groups=False)
        assert parsed.msh.msh_10.value == row.control_id
        # Acknowledged: running the timers again sends nothing.
        run_timers(db)
        assert len(peer.received) == 1


def test_nothing_is_queued_without_a_destination_or_before_the_report_is_final(db: Session,
                                                                                 tele: TeleWorld) -> None:
    signed(db, tele)  # the township has no destination
    assert queued(db) == []
    with Peer() as peer:
        dest = destination(db, tele, port=peer.port)
        trainees = signed(db, tele, by=tele.trainee)  # a trainee's signature is preliminary: nothing goes out yet
        run_timers(db)
        assert queued(db) == []
        reports.cosign(db, request_id=trainees.id, by=tele.senior)  # final now: queued at the co-signature
        db.commit()
        run_timers(db, kinds=(outbound.SEND_KIND,))
        [row] = queued(db)
        assert row.state == "sent" and obx_text(peer.messages()[0], "SIGNER")[0].startswith("钱医师")
        db.delete(row)
        db.commit()
        dest.is_active = False
        db.commit()
        signed(db, tele)
        assert queued(db) == [] and len(peer.received) == 1  # only the co-signed one
        # A destination with a charset we cannot write: the signature stands, the refusal is audited.
        dest.is_active, dest.charset = True, "Shift_JIS"
        db.commit()
        request = signed(db, tele)
        assert queued(db) == [] and str(request.state) == "reported"
        refused = db.execute(select(AuditEvent).where(AuditEvent.action == "hl7.outbound.queue",
                                                      AuditEvent.outcome == "error")).scalar_one()
        assert "charset" in refused.detail["error"]


def test_a_peer_that_is_down_gets_the_message_later_with_the_same_control_id(db: Session, tele: TeleWorld) -> None:
    port = free_port()
    destination(db, tele, port=port)
    signed(db, tele)
    run_timers(db, due_now=False)
    [row] = queued(db)
    assert row.state == "pending" and row.attempts == 1 and "cannot connect" in row.last_error
    assert row.next_attempt_at is not None and row.next_attempt_at > utcnow()  # backoff: not hammered at once
    control = row.control_id
    run_timers(db, due_now=False)
    assert queued(db)[0].attempts == 1  # the next attempt is not due yet
    with Peer(port=port) as peer:
        run_timers(db)
        [row] = queued(db)
        assert row.state == "sent" and row.attempts == 2 and row.last_error == ""
        assert [str(m.segment("MSH")(10)) for m in peer.messages()] == [control]


@pytest.fixture
def admin_client(app, client):  # noqa: ANN001, ANN201
    """The lead includes outbound_pages.router in the app; until then the test adds it."""
    if not any(getattr(r, "path", "") == "/admin/hl7/outbound" for r in app.routes):
        app.include_router(outbound_pages.router)
    return client


def test_an_answer_of_ae_is_retried_then_failed_then_retried_by_an_admin(admin_client, db: Session,  # noqa: ANN001
                                                                        tele: TeleWorld) -> None:
    client = admin_client
    staff(db, organisation=tele.town, username="town_ywk", display_name="医务科冯", role=Role.ORG_ADMIN)
    db.commit()
    with Peer(answer="AE") as peer:
        destination(db, tele, port=peer.port)
        request = signed(db, tele)
        for _ in range(outbound.MAX_ATTEMPTS + 2):
            run_timers(db)
        [row] = queued(db)
        assert row.state == "failed" and row.attempts == outbound.MAX_ATTEMPTS and row.ack_code == "AE"
        assert "AE" in row.last_error and "unknown patient" in row.last_error
        # Every attempt carried the same message control ID.
        assert {str(m.segment("MSH")(10)) for m in peer.messages()} == {row.control_id}
        assert len(peer.received) == outbound.MAX_ATTEMPTS
        token = login(client, "town_ywk")
        page = client.get("/admin/hl7/outbound?state=failed")
        assert page.status_code == 200
        assert f'id="out-{row.id}"' in page.text and request.number in page.text and f'id="retry-{row.id}"' in page.text
        assert tele.patient.name not in page.text  # metadata only
        assert client.get("/admin/hl7/outbound?state=lost").status_code == 422
        peer.answer = "AA"  # the member registered the patient; the admin presses "retry now"
        retried = client.post(f"/admin/hl7/outbound/{row.id}/retry", data={"csrf_token": token},
                              follow_redirects=False)
        assert retried.status_code == 303 and retried.headers["location"] == f"/admin/hl7/outbound?retried={row.id}"
        assert queued(db)[0].state == "pending"
        run_timers(db, due_now=False)
        [row] = queued(db)
        assert row.state == "sent" and row.attempts == outbound.MAX_ATTEMPTS + 1
        assert len(peer.received) == outbound.MAX_ATTEMPTS + 1
        # Acknowledged: never again, not even by the button.
        again = client.post(f"/admin/hl7/outbound/{row.id}/retry", data={"csrf_token": token})
        assert again.status_code == 409
        with pytest.raises(NotFound):  # the county's 医务科 has no business with the township's queue
            outbound.retry_now(db, outbound_id=row.id, by=tele.county_admin)
        db.rollback()
        run_timers(db)
        assert len(peer.received) == outbound.MAX_ATTEMPTS + 1
    assert db.execute(select(AuditEvent).where(AuditEvent.action == "hl7.outbound.retry")).scalar_one()
    # Another organisation's admin does not see it; a clinician may not open the page.
    client.cookies.clear()
    login(client, "ywk_admin")
    assert f'id="out-{row.id}"' not in client.get("/admin/hl7/outbound").text
    client.cookies.clear()
    login(client, "town_doc")
    assert client.get("/admin/hl7/outbound").status_code == 403
