"""People with contact addresses, a real local SMTP server, a live-event collector, and an SSE client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.core import timers
from healthrelay.core.config import get_settings
from healthrelay.core.db import get_sessionmaker, utcnow
from healthrelay.core.timers import Timer
from healthrelay.directory.models import Organisation, OrgKind, OrgLevel
from healthrelay.notifications import channels, live
from tests import factories as f
from tests.conftest import free_port


@dataclass
class People:
    county: Organisation
    town: Organisation
    doctor: User  # county clinician with email, mobile and WeChat
    colleague: User  # another county clinician, email only
    town_doctor: User  # township clinician, no addresses at all
    resident: User  # a patient account with a mobile number
    county_admin: User
    alliance_admin: User
    retired: User  # deactivated account with an email


@pytest.fixture
def people(db: Session) -> People:
    county = f.organisation(db, name="测试县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    town = f.organisation(db, name="东山镇卫生院")
    doctor = f.user(db, organisation=county, username="zhang_doc")
    doctor.email, doctor.mobile, doctor.wechat_openid = "zhang@county.example", "13912345678", "oWx_zhang_0001abcd"
    colleague = f.user(db, organisation=county, username="li_doc")
    colleague.email = "li@county.example"
    retired = f.user(db, organisation=county, username="retired_doc")
    retired.email, retired.is_active = "old@county.example", False
    resident_record = f.patient(db, registered_at=town)
    resident = f.user(db, role=Role.PATIENT, username="resident_wang", patient=resident_record)
    resident.mobile = "13800001111"
    people = People(county=county, town=town, doctor=doctor, colleague=colleague,
                    town_doctor=f.user(db, organisation=town, username="town_doc"), resident=resident,
                    county_admin=f.user(db, organisation=county, role=Role.ORG_ADMIN, username="county_admin"),
                    alliance_admin=f.user(db, role=Role.ALLIANCE_ADMIN, username="alliance_admin"),
                    retired=retired)
    db.commit()
    return people


def run_timers() -> int:
    return timers.run_due(get_sessionmaker(), runner="test")


def move_timers_due(db: Session, kind: str) -> None:
    """Time moves for the test (retry backoff), nothing is slept through."""
    db.execute(update(Timer).where(Timer.kind == kind, Timer.fired_at.is_(None))
               .values(due_at=utcnow() - timedelta(seconds=1)))
    db.commit()


@pytest.fixture
def settings_env() -> Iterator[Callable[..., None]]:
    """Set HEALTHRELAY_* settings for one test; the settings cache is cleared both ways."""
    saved: dict[str, str | None] = {}

    def apply(**values: object) -> None:
        for key, value in values.items():
            name = f"HEALTHRELAY_{key.upper()}"
            saved.setdefault(name, os.environ.get(name))
            os.environ[name] = str(value)
        get_settings.cache_clear()

    yield apply
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    get_settings.cache_clear()
    channels.reset()


@dataclass
class Mailbox:
    host: str
    port: int
    messages: list[Any]


@pytest.fixture
def smtp_server(settings_env: Callable[..., None]) -> Iterator[Mailbox]:
    """A real SMTP server (aiosmtpd) on loopback; the app is configured to use it."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received: list[Any] = []

    class Keep(Message):
        def handle_message(self, message: Any) -> None:
            received.append(message)

    port = free_port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    settings_env(smtp_host="127.0.0.1", smtp_port=port, smtp_from="noreply@healthrelay.example")
    yield Mailbox(host="127.0.0.1", port=port, messages=received)
    controller.stop()


# ---------------------------------------------------------------------------- live events in-process

def collect_live(topics: list[str], action: Callable[[], None], *, until_type: str,
                 timeout: float = 10.0) -> list[dict[str, Any]]:
    """Subscribe to the bus, run `action` in a thread, return every event up to one of `until_type`."""

    async def main() -> list[dict[str, Any]]:
        sub = live.bus.subscribe(topics)
        try:
            if not await asyncio.to_thread(live.ensure_listener, get_settings().database_url):
                raise AssertionError("the PostgreSQL listener did not start")
            await asyncio.to_thread(action)
            seen: list[dict[str, Any]] = []
            while True:
                topic, event = await sub.get(timeout=timeout)
                seen.append({**event, "topic": topic})
                if event.get("type") == until_type:
                    return seen
        finally:
            live.bus.unsubscribe(sub)

    # A thread of its own: Playwright's session-wide fixtures keep an event loop running in this one.
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["events"] = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=timeout + 20)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["events"]


# ---------------------------------------------------------------------------- an SSE client

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def signed_in(base_url: str, username: str) -> httpx.Client:
    client = httpx.Client(base_url=base_url, timeout=httpx.Timeout(15.0))
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"})
    assert response.status_code == 303, response.text
    return client


class SseClient:
    """Reads /notifications/stream in a thread and hands each parsed event to the test."""

    def __init__(self, http: httpx.Client, *, last_event_id: str | None = None) -> None:
        self.http = http
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.status: int | None = None
        self.ids: list[str] = []
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._headers = headers
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            with self.http.stream("GET", "/notifications/stream", headers=self._headers,
                                  timeout=httpx.Timeout(15.0, read=None)) as response:
                self.status = response.status_code
                self._socket = response.extensions["network_stream"].get_extra_info("socket")
                if response.status_code != 200:
                    self.events.put({"type": "http_error", "status": response.status_code})
                    return
                data: list[str] = []
                event_id: str | None = None
                for line in response.iter_lines():
                    if self._stop.is_set():
                        return
                    if line == "":
                        if data:
                            event = json.loads("\n".join(data))
                            event["_id"] = event_id
                            self.events.put(event)
                        data, event_id = [], None
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip())
                    elif line.startswith("id:"):
                        event_id = line[3:].strip()
                        self.ids.append(event_id)
        except Exception as exc:  # noqa: BLE001 - closing the client from the test ends the read this way
            if not self._stop.is_set():
                self.events.put({"type": "reader_error", "error": repr(exc)})

    def next(self, *, timeout: float = 10.0, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no live event arrived in time")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError("no live event arrived in time") from None
            if event.get("type") not in skip:
                return event

    def close(self) -> None:
        """Hang up as a closed tab does: the blocked read ends now, not at the next keep-alive ping."""
        self._stop.set()
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self.http.close()
        self._thread.join(timeout=10)


def login(client: Any, username: str) -> str:
    """Sign in through the login form (TestClient); returns a CSRF token for later forms."""
    token = CSRF_RE.search(client.get("/login").text).group(1)
    response = client.post("/login", data={"username": username, "password": f.PASSWORD, "csrf_token": token,
                                           "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return CSRF_RE.search(client.get("/inbox").text).group(1)
