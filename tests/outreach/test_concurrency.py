"""200 residents' bookings arriving at once for a clinic with 20 places, through the real server: exactly 20
places taken, the waitlist filled to its limit, every other request a clean 409 `session_full` — on SQLite (the
write lock queues them) and on PostgreSQL (the conditional UPDATE decides)."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.outreach.models import OutreachBooking
from tests import factories as f
from tests.outreach.conftest import World, clinic

REQUESTS = 200
PLACES = 20
WAITLIST = 30


def test_two_hundred_simultaneous_bookings_for_twenty_places(live_server: str, db: Session, world: World) -> None:
    session = clinic(db, world, capacity=PLACES, waitlist=WAITLIST)
    residents = [f.patient(db, name=f"居民{i:03d}", registered_at=world.town).id for i in range(REQUESTS)]
    db.commit()
    token = httpx.post(f"{live_server}/api/v1/auth/token",
                       data={"username": "town_doc", "password": f.PASSWORD}).json()["access_token"]
    url = f"{live_server}/api/v1/outreach/sessions/{session.id}/bookings"
    barrier = threading.Barrier(REQUESTS)
    outcomes: list[tuple[int, str]] = []
    lock = threading.Lock()

    def book(patient_id: int, client: httpx.Client) -> None:
        barrier.wait()
        r = client.post(url, json={"patient_id": patient_id}, headers={"Authorization": f"Bearer {token}"})
        body = r.json()
        with lock:
            outcomes.append((r.status_code, body.get("status") or body.get("code", "")))

    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=0)
    with httpx.Client(timeout=120, limits=limits) as client:
        threads = [threading.Thread(target=book, args=(pid, client)) for pid in residents]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    counts = Counter(outcomes)
    assert counts == {(201, "booked"): PLACES, (201, "waitlisted"): WAITLIST,
                      (409, "session_full"): REQUESTS - PLACES - WAITLIST}, counts
    db.expire_all()
    db.refresh(session)
    stored = dict(db.execute(select(OutreachBooking.status, func.count()).where(
        OutreachBooking.session_id == session.id).group_by(OutreachBooking.status)).all())
    assert stored == {"booked": PLACES, "waitlisted": WAITLIST}
    assert (session.booked_count, session.waitlist_count) == (PLACES, WAITLIST)
