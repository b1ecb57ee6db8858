"""Live push: an in-process bus of asyncio queues, fed after commit.

Events leave only when the transaction that produced them commits, so a page never shows
something the database then forgets:

- PostgreSQL: `publish` runs `pg_notify` inside the transaction; PostgreSQL delivers it at commit
  (and drops it on rollback, savepoints included) to every process's listener thread, which feeds
  that process's bus. One path for one process or many.
- SQLite (one process): events wait on the Session (`session.info`) and go to the bus in an
  `after_commit` hook; a rollback, a rolled-back savepoint or a close without commit drops them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, SessionTransaction

log = logging.getLogger("healthrelay.live")

CHANNEL = "healthrelay_live"
# pg_notify refuses payloads of 8000 bytes or more; leave room for the envelope.
MAX_NOTIFY_BYTES = 7900
QUEUE_SIZE = 500
# How the listener's connection shows in pg_stat_activity.
APPLICATION_NAME = "healthrelay-live-listener"
_PENDING_KEY = "healthrelay_live_pending"
# Keys worth keeping when a payload is too large to travel whole: ids and short labels.
_SHORT_TEXT = 80


# ---------------------------------------------------------------------------- the bus

@dataclass(eq=False)
class Subscription:
    """One open stream: its topics and a bounded queue on the event loop that serves it."""

    topics: frozenset[str]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE))
    # Set when the client fell too far behind: the stream ends and the browser reconnects with
    # Last-Event-ID, which replays what it missed, instead of the server buffering without bound.
    overflowed: bool = False

    def _put(self, item: tuple[str, dict[str, Any]]) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True

    async def get(self, timeout: float | None = None) -> tuple[str, dict[str, Any]]:
        return await asyncio.wait_for(self.queue.get(), timeout)


class Bus:
    """Fan-out by topic to the subscribers of this process; safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_topic: dict[str, set[Subscription]] = {}

    def subscribe(self, topics: Iterable[str]) -> Subscription:
        """Call from the event loop that will read the subscription."""
        sub = Subscription(topics=frozenset(topics), loop=asyncio.get_running_loop())
        with self._lock:
            for topic in sub.topics:
                self._by_topic.setdefault(topic, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            for topic in sub.topics:
                subs = self._by_topic.get(topic)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self._by_topic[topic]

    def subscriber_count(self, topic: str | None = None) -> int:
        with self._lock:
            if topic is not None:
                return len(self._by_topic.get(topic, ()))
            return len({s for subs in self._by_topic.values() for s in subs})

    def deliver(self, topic: str, event: dict[str, Any]) -> None:
        with self._lock:
            subs = list(self._by_topic.get(topic, ()))
        self._hand_over(subs, topic, event)

    def deliver_to_all(self, event: dict[str, Any]) -> None:
        """For `resync`: every open stream re-reads what it may have missed."""
        with self._lock:
            subs = list({s for group in self._by_topic.values() for s in group})
        self._hand_over(subs, "*", event)

    def _hand_over(self, subs: list[Subscription], topic: str, event: dict[str, Any]) -> None:
        for sub in subs:
            try:
                sub.loop.call_soon_threadsafe(sub._put, (topic, event))
            except RuntimeError:  # its event loop has closed: the stream is gone
                self.unsubscribe(sub)


bus = Bus()


# ---------------------------------------------------------------------------- publishing

def publish(db: Session, *, topic: str, event: dict[str, Any]) -> None:
    """Queue a live event in the caller's transaction; it leaves only if that transaction commits."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("SELECT pg_notify(:channel, :payload)"),
                   {"channel": CHANNEL, "payload": encode_for_notify(topic, event)})
        return
    pending: list[_Pending] = db.info.setdefault(_PENDING_KEY, [])
    pending.append(_Pending(topic=topic, event=event, savepoints=_open_savepoints(db)))


def encode_for_notify(topic: str, event: dict[str, Any]) -> str:
    """JSON for pg_notify; too large, only ids and short labels travel and the client fetches the rest."""
    payload = json.dumps({"topic": topic, "event": event}, ensure_ascii=False, default=str)
    if len(payload.encode()) <= MAX_NOTIFY_BYTES:
        return payload
    slim = {k: v for k, v in event.items()
            if isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= _SHORT_TEXT)}
    slim["truncated"] = True
    return json.dumps({"topic": topic, "event": slim}, ensure_ascii=False, default=str)


@dataclass
class _Pending:
    topic: str
    event: dict[str, Any]
    savepoints: tuple[SessionTransaction, ...]


def _open_savepoints(db: Session) -> tuple[SessionTransaction, ...]:
    chain = []
    tx = db.get_nested_transaction()
    while tx is not None and tx.nested:
        chain.append(tx)
        tx = tx.parent
    return tuple(chain)


@event.listens_for(Session, "after_commit")
def _deliver_after_commit(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint released; the outer transaction may still roll back
        return
    pending: list[_Pending] = session.info.pop(_PENDING_KEY, [])
    for item in pending:
        try:
            bus.deliver(item.topic, item.event)
        except Exception:  # noqa: BLE001 - the data is committed; a lost push must not turn into an error
            log.exception("live event for %s not delivered", item.topic)


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    pending: list[_Pending] | None = session.info.get(_PENDING_KEY)
    if not pending:
        return
    if not previous_transaction.nested:
        session.info.pop(_PENDING_KEY, None)
        return
    pending[:] = [p for p in pending if previous_transaction not in p.savepoints]


@event.listens_for(Session, "after_transaction_end")
def _forget_at_end(session: Session, transaction: SessionTransaction) -> None:
    # A close() without commit ends the transaction with no rollback event: nothing may leak later.
    if transaction.parent is None and not transaction.nested:
        session.info.pop(_PENDING_KEY, None)


# ---------------------------------------------------------------------------- PostgreSQL listener

class Listener(threading.Thread):
    """LISTEN on its own connection and feed this process's bus; reconnects with backoff."""

    def __init__(self, database_url: str) -> None:
        super().__init__(name="healthrelay-live-listener", daemon=True)
        self.database_url = database_url
        self.conninfo = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.ready = threading.Event()
        self.stop_event = threading.Event()
        self.connections = 0  # how many times LISTEN was (re)established; tests read it

    def run(self) -> None:
        import psycopg

        delay = 0.5
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10,
                                     application_name=APPLICATION_NAME) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connections += 1
                    if self.connections > 1:
                        # Events committed while we were away never reached us: streams re-read.
                        bus.deliver_to_all({"type": "resync"})
                    self.ready.set()
                    delay = 0.5
                    self._pump(conn)
            except Exception:  # noqa: BLE001 - the database restarts or the network drops; try again
                log.warning("live listener lost its connection; retrying in %.1fs", delay, exc_info=True)
            self.ready.clear()
            self.stop_event.wait(delay)
            delay = min(delay * 2, 30.0)

    def _pump(self, conn: Any) -> None:
        idle = 0.0
        while not self.stop_event.is_set():
            got = False
            for note in conn.notifies(timeout=1.0):
                got = True
                self._dispatch(note.payload)
            idle = 0.0 if got else idle + 1.0
            if idle >= 30.0:  # a silent connection may be a dead one; find out
                conn.execute("SELECT 1")
                idle = 0.0

    @staticmethod
    def _dispatch(payload: str) -> None:
        try:
            message = json.loads(payload)
            bus.deliver(str(message["topic"]), dict(message["event"]))
        except Exception:  # noqa: BLE001 - one malformed payload must not stop the listener
            log.warning("malformed live payload ignored", exc_info=True)

    def stop(self) -> None:
        self.stop_event.set()


_listener: Listener | None = None
_listener_lock = threading.Lock()


def ensure_listener(database_url: str, *, wait: float = 10.0) -> bool:
    """Start this process's listener if needed (PostgreSQL only); True once it is listening."""
    global _listener
    if not database_url.startswith("postgresql"):
        return True
    with _listener_lock:
        if _listener is not None and (_listener.database_url != database_url or not _listener.is_alive()):
            _listener.stop()
            _listener = None
        if _listener is None:
            _listener = Listener(database_url)
            _listener.start()
        listener = _listener
    return listener.ready.wait(wait)


def stop_listener() -> None:
    global _listener
    with _listener_lock:
        if _listener is not None:
            _listener.stop()
            _listener.join(timeout=5)
            _listener = None
