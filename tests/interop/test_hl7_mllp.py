"""HL7 v2 over MLLP with real clients: messages built with hl7apy (tests/hl7/messages.py), sent with python-hl7's
`hl7.client.MLLPClient` (and a raw socket for the broken cases) to our listener on 127.0.0.1.

The restart test runs `healthrelay hl7` as a separate process, kills it with SIGKILL in the middle of a stream
of results and restarts it: every acknowledged message must be stored exactly once, and nothing is lost once
the client has resent what was not acknowledged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from hl7.client import MLLPClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.core.db import get_sessionmaker
from healthrelay.hl7.listener import Listener, start_listener
from healthrelay.hl7.models import Hl7DeadLetter, Hl7Message
from healthrelay.patients.models import Patient
from healthrelay.results.models import ExamResult, LabResult
from tests.conftest import free_port
from tests.hl7 import messages as m
from tests.hl7.world import Hl7World, build_world, count, person

SB, EB = b"\x0b", b"\x1c\r"


@pytest.fixture
def world(db: Session) -> Hl7World:
    return build_world(db)


@pytest.fixture
def listener(world: Hl7World) -> Iterator[Listener]:
    running = start_listener(get_sessionmaker(), host="127.0.0.1", port=0)
    yield running
    running.shutdown()


def read_ack(client: MLLPClient, first: bytes, timeout: float = 30.0) -> bytes:
    """MLLPClient returns one recv(); collect up to the end block (bounded), return the payload."""
    data = first
    client.socket.settimeout(timeout)
    while EB not in data:
        chunk = client.socket.recv(4096)
        if not chunk:
            raise ConnectionError("the listener closed the connection before answering")
        data += chunk
    assert data.startswith(SB) and data.endswith(EB), data[:200]
    return data[1:-2]


def exchange(client: MLLPClient, raw: bytes, codec: str = "utf-8") -> hl7.Message:
    ack = read_ack(client, client.send_message(raw))
    return hl7.parse(ack.decode(codec))


def msa(ack: hl7.Message) -> tuple[str, str, str]:
    seg = ack.segment("MSA")
    return str(seg(1)), str(seg(2)), ack.unescape(str(seg(3))) if len(seg) > 3 else ""


# --- the three kinds of message, with Chinese, in both character sets ----------------------------------

@pytest.mark.parametrize("charset", [m.UTF8, m.GB18030])
def test_adt_oru_orm_with_chinese_text(listener: Listener, world: Hl7World, db: Session, charset: str) -> None:
    codec = "gb18030" if charset == m.GB18030 else "utf-8"
    tag = "GB" if charset == m.GB18030 else "U8"
    p = person("欧阳淑珍")
    with MLLPClient("127.0.0.1", listener.port, encoding=codec) as client:
        ack = exchange(client, m.encode(m.adt_a01(p, control_id=f"{tag}-A01", charset=charset), charset), codec)
        assert msa(ack)[:2] == ("AA", f"{tag}-A01")
        assert str(ack.segment("MSH")(18)) == charset
        oru = m.oru_r01(p, [
            m.LabOrder(tests=[m.Lab("K", "5.9", name="钾", unit="mmol/L", range="3.5-5.3", flag="H")],
                       filler=f"{tag}-F1", specimen="血清"),
            m.ExamReport("CT_HEAD", findings="左侧基底节区见斑片状低密度影，边界欠清。",
                         impression="左侧基底节区腔隙性脑梗死", filler=f"{tag}-F2")],
            control_id=f"{tag}-ORU", charset=charset)
        assert msa(exchange(client, m.encode(oru, charset), codec))[:2] == ("AA", f"{tag}-ORU")
        orm = m.orm_o01(p, [m.OrderLine("CT_CHEST", placer=f"{tag}-ORD1", name="胸部CT平扫",
                                        reason="咳嗽两周，排除肺部占位")], control_id=f"{tag}-ORM", charset=charset)
        assert msa(exchange(client, m.encode(orm, charset), codec))[:2] == ("AA", f"{tag}-ORM")
        oml = m.oml_o21(p, [m.OrderLine("GLU", placer=f"{tag}-ORD2", name="空腹血糖")], control_id=f"{tag}-OML",
                        charset=charset)
        assert msa(exchange(client, m.encode(oml, charset), codec))[:2] == ("AA", f"{tag}-OML")
    db.expire_all()
    patient = db.scalar(select(Patient).where(Patient.name == "欧阳淑珍"))
    assert patient is not None
    lab = db.scalar(select(LabResult).where(LabResult.patient_id == patient.id))
    assert (lab.test_code, lab.value_text, lab.specimen) == ("K", "5.9", "血清")
    exam = db.scalar(select(ExamResult).where(ExamResult.patient_id == patient.id))
    assert exam.findings == "左侧基底节区见斑片状低密度影，边界欠清。" and exam.impression == "左侧基底节区腔隙性脑梗死"
    orm_row = db.scalar(select(Hl7Message).where(Hl7Message.control_id == f"{tag}-ORM"))
    assert orm_row.detail["orders"] and orm_row.charset == ("GB18030" if tag == "GB" else "UTF-8")
    assert count(db, Hl7DeadLetter) == 0


# --- everything that should not be taken ------------------------------------------------------------------

def test_bad_messages_get_negative_acks_and_dead_letters(listener: Listener, world: Hl7World, db: Session) -> None:
    p = person("赵凤英")
    with MLLPClient("127.0.0.1", listener.port) as client:
        assert msa(exchange(client, m.encode(m.adt_a04(p, control_id="NEG-A04"))))[0] == "AA"
        answers = {}
        answers["malformed"] = exchange(client, "PID|1||这不是一条HL7消息".encode())
        labs = m.oru_r01(p, [m.LabOrder(tests=[m.Lab("GLU", "7.1"), m.Lab("NA", "139")], filler="NEG-F1")],
                         control_id="NEG-ORDER")
        answers["order"] = exchange(client, m.encode(m.move_segment(labs, "OBX", before="OBR")))
        answers["code"] = exchange(client, m.encode(m.oru_r01(p, [m.LabOrder(tests=[m.Lab("NOSUCHTEST", "1")])],
                                                              control_id="NEG-CODE")))
        answers["patient"] = exchange(client, m.encode(m.oru_r01(person("无此人"), [m.LabOrder(
            tests=[m.Lab("GLU", "5.0")])], control_id="NEG-NOBODY")))
        answers["charset"] = exchange(client, m.adt_a08(p, control_id="NEG-BYTES").encode("gb18030"))
        good = m.encode(m.oru_r01(p, [m.LabOrder(tests=[m.Lab("GLU", "6.2")], filler="NEG-F2")],
                                  control_id="NEG-TWICE"))
        first = read_ack(client, client.send_message(good))
        again = read_ack(client, client.send_message(good))
    assert msa(answers["malformed"])[0] == "AR"
    assert msa(answers["order"])[:2] in {("AR", "NEG-ORDER"), ("AE", "NEG-ORDER")}
    assert msa(answers["code"])[:2] == ("AE", "NEG-CODE") and "NOSUCHTEST" in msa(answers["code"])[2]
    assert msa(answers["patient"])[:2] == ("AE", "NEG-NOBODY")
    assert msa(answers["charset"])[:2] == ("AR", "NEG-BYTES")
    assert again == first and msa(hl7.parse(first.decode()))[:2] == ("AA", "NEG-TWICE")
    db.expire_all()
    reasons = dict(db.execute(select(Hl7DeadLetter.control_id, Hl7DeadLetter.reason_code)).all())
    assert reasons["NEG-ORDER"] == "segment_order"
    assert reasons["NEG-CODE"] == "unknown_code"
    assert reasons["NEG-NOBODY"] == "unknown_patient"
    assert reasons["NEG-BYTES"] == "bad_charset"
    assert reasons[""] == "malformed"
    assert set(db.scalars(select(Hl7Message.control_id))) == {"NEG-A04", "NEG-TWICE"}
    assert count(db, LabResult) == 1  # only NEG-TWICE's glucose, once


def test_connection_dropped_mid_message_stores_nothing(listener: Listener, world: Hl7World, db: Session) -> None:
    p = person("钱春兰")
    raw = m.encode(m.adt_a04(p, control_id="DROP-1"))
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(SB + raw[: len(raw) // 2])
    # The listener goes on serving; the whole message sent afterwards is taken once.
    with MLLPClient("127.0.0.1", listener.port) as client:
        assert msa(exchange(client, m.encode(m.adt_a04(person(), control_id="DROP-OTHER"))))[0] == "AA"
    db.expire_all()
    assert count(db, Hl7Message, control_id="DROP-1") == 0 and count(db, Hl7DeadLetter) == 0
    assert count(db, Patient, name="钱春兰") == 0
    with MLLPClient("127.0.0.1", listener.port) as client:
        assert msa(exchange(client, raw))[:2] == ("AA", "DROP-1")
    db.expire_all()
    assert count(db, Hl7Message, control_id="DROP-1") == 1 and count(db, Patient, name="钱春兰") == 1


def test_oversized_frame_is_refused(world: Hl7World, db: Session) -> None:
    small = start_listener(get_sessionmaker(), host="127.0.0.1", port=0, max_frame_bytes=2048)
    try:
        p = person("孙大伟")
        huge = m.oru_r01(p, [m.ExamReport("CT_HEAD", findings="未见异常。" * 2000)], control_id="HUGE-1")
        with MLLPClient("127.0.0.1", small.port) as client:
            ack = exchange(client, m.encode(huge))
            assert msa(ack)[0] == "AR"
            client.socket.settimeout(10)
            assert client.socket.recv(10) == b""  # and the connection is closed
        with MLLPClient("127.0.0.1", small.port) as client:  # the listener itself goes on
            assert msa(exchange(client, m.encode(m.adt_a04(p, control_id="SMALL-1"))))[0] == "AA"
    finally:
        small.shutdown()
    db.expire_all()
    assert count(db, Hl7Message, control_id="HUGE-1") == 0


def test_same_message_on_eight_connections_at_once_is_stored_once(listener: Listener, world: Hl7World,
                                                                    db: Session) -> None:
    p = person("吴丽华")
    with MLLPClient("127.0.0.1", listener.port) as client:
        assert msa(exchange(client, m.encode(m.adt_a04(p, control_id="RACE-A04"))))[0] == "AA"
    raw = m.encode(m.oru_r01(p, [m.LabOrder(tests=[m.Lab("GLU", "8.8")], filler="RACE-F1")], control_id="RACE-1"))
    clients = [MLLPClient("127.0.0.1", listener.port) for _ in range(8)]
    barrier = threading.Barrier(len(clients))
    answers: list[tuple[str, str, str]] = []

    def one(client: MLLPClient) -> None:
        barrier.wait(timeout=30)
        answers.append(msa(exchange(client, raw)))

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in clients:
        c.close()
    assert [a[:2] for a in answers] == [("AA", "RACE-1")] * 8
    db.expire_all()
    assert count(db, Hl7Message, control_id="RACE-1") == 1 and count(db, LabResult) == 1


def test_the_web_app_runs_the_listener(world: Hl7World, db: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    """`healthrelay serve` (without --no-hl7) starts the listener with the app and stops it with the app."""
    from fastapi.testclient import TestClient

    from healthrelay.asgi import app
    from healthrelay.core.db import reset_caches

    port = free_port()
    monkeypatch.setenv("HEALTHRELAY_RUN_HL7", "1")
    monkeypatch.setenv("HEALTHRELAY_HL7_PORT", str(port))
    reset_caches()
    with TestClient(app), MLLPClient("127.0.0.1", port) as client:
        assert msa(exchange(client, m.encode(m.adt_a04(person("郑春花"), control_id="WEB-1"))))[:2] == \
                ("AA", "WEB-1")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    db.expire_all()
    assert count(db, Hl7Message, control_id="WEB-1") == 1


# --- a killed listener loses no acknowledged message ----------------------------------------------------------

def _start_process(database_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HEALTHRELAY_DATABASE_URL": database_url, "HEALTHRELAY_HL7_PORT": str(port),
           "HEALTHRELAY_HL7_HOST": "127.0.0.1"}
    out = log.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "healthrelay.cli", "hl7"], env=env, stdout=out,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"healthrelay hl7 exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("healthrelay hl7 did not start listening")


def test_killed_listener_loses_no_acknowledged_message(world: Hl7World, db: Session, database_url: str,
                                                       tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "hl7.log"
    proc = _start_process(database_url, port, log)
    p = person("周玉梅")
    total, kill_at = 300, 137
    raws = {f"RS-{i:04d}": m.encode(m.oru_r01(p, [m.LabOrder(tests=[m.Lab("GLU", f"{5 + i / 100:.2f}")],
                                                               filler=f"RS-F{i:04d}")], control_id=f"RS-{i:04d}"))
            for i in range(total)}
    acked: list[str] = []
    try:
        with MLLPClient("127.0.0.1", port) as client:
            assert msa(exchange(client, m.encode(m.adt_a04(p, control_id="RS-A04"))))[0] == "AA"
        client = MLLPClient("127.0.0.1", port)
        for n, (control_id, raw) in enumerate(raws.items()):
            try:
                if n == kill_at:  # the message is on the wire when the process dies
                    client.socket.sendall(SB + raw + EB)
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    continue
                ack = exchange(client, raw)
            except OSError:
                continue  # the listener is gone: this one stays unacknowledged
            if msa(ack)[:2] == ("AA", control_id):
                acked.append(control_id)
        client.close()
        assert proc.poll() is not None and kill_at - 1 <= len(acked) <= kill_at
        proc = _start_process(database_url, port, log)
        unacked = [c for c in raws if c not in acked]
        resend = unacked + acked[-25:]  # and some the listener had already answered
        with MLLPClient("127.0.0.1", port) as client:
            for control_id in resend:
                assert msa(exchange(client, raws[control_id]))[:2] == ("AA", control_id)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    db.expire_all()
    rows = dict(db.execute(select(Hl7Message.control_id, func.count()).where(Hl7Message.control_id.like("RS-%"))
                           .group_by(Hl7Message.control_id)).all())
    assert set(rows) == set(raws) | {"RS-A04"}
    assert set(rows.values()) == {1}, "every message stored exactly once"
    assert count(db, LabResult) == total
    assert count(db, Hl7DeadLetter) == 0
