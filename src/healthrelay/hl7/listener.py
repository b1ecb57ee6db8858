"""The MLLP listener: member hospitals' HIS and LIS connect and send HL7 v2 messages, one at a time per
connection, each answered with an ACK.

An asyncio server (python-hl7's `hl7.mllp` framing: <VT> message <FS><CR>) runs on an event loop in a thread
of its own, so `healthrelay serve` can run it beside uvicorn and `healthrelay hl7` alone. Frames are read as
raw bytes — the character set is per message (MSH-18), so the framing never decodes. The database work of a
message (service.handle_bytes, which commits before it returns) runs in a small thread pool, so a wait for
the database never stalls the other connections. A connection dropped mid-frame stores nothing; a frame over
the size limit is answered AR and the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from hl7.mllp import InvalidBlockError, start_hl7_server
from sqlalchemy.orm import Session, sessionmaker

from healthrelay.hl7 import service

log = logging.getLogger("healthrelay.hl7.listener")

MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_CONNECTIONS = 64
DB_THREADS = 16


class Listener:
    """A running MLLP listener: `.port` (the bound port), `.shutdown()`, `.wait()`."""

    def __init__(self, db_factory: sessionmaker[Session], *, host: str, port: int,
                 max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.db_factory = db_factory
        self.host = host
        self.port = port
        self.max_frame_bytes = max_frame_bytes
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # SQLite has one writer at a time, and writers waiting for its lock poll with growing sleeps, so a
        # few connections would starve each other (seconds of ACK latency); one database thread takes their
        # messages in arrival order instead. PostgreSQL gets a pool.
        bind = db_factory.kw.get("bind")
        sqlite = bind is not None and bind.dialect.name == "sqlite"
        self._executor = ThreadPoolExecutor(max_workers=1 if sqlite else DB_THREADS, thread_name_prefix="hl7-db")
        self.thread = threading.Thread(target=self._run, name=f"hl7-listener-{port}", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the thread that started us
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await start_hl7_server(self._connected, self.host, self.port, limit=self.max_frame_bytes)
        self.port = int(server.sockets[0].getsockname()[1])
        self._started.set()
        log.info("HL7 MLLP listener on %s:%s", self.host, self.port)
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=10)
        self._executor.shutdown(wait=True)

    def start(self) -> Listener:
        self.thread.start()
        self._started.wait(timeout=30)
        if self._error is not None:
            raise self._error
        if not self._started.is_set():
            raise RuntimeError("HL7 listener did not start")
        return self

    def shutdown(self) -> None:
        """Stop accepting, end the connections; a message being stored finishes (its ACK may not go out,
        so the sender resends it and is answered from the stored row)."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=30)

    def wait(self) -> None:
        """Block until the listener stops (Ctrl-C in `healthrelay hl7`)."""
        while self.thread.is_alive():
            self.thread.join(timeout=0.5)

    # --- one connection -----------------------------------------------------------------------------

    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername or "")
        if self.connections >= MAX_CONNECTIONS:
            log.warning("HL7 connection from %s refused: %s connections open", peer, self.connections)
            writer.close()
            return
        self.connections += 1
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    raw = await reader.readblock()  # type: ignore[attr-defined]
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        log.warning("HL7 connection from %s dropped mid-message: %d bytes discarded, nothing stored",
                                    peer, len(exc.partial))
                    break
                except ValueError:  # over the frame limit (LimitOverrunError re-raised by hl7.mllp)
                    log.warning("HL7 frame from %s over %d bytes refused", peer, self.max_frame_bytes)
                    ack = service.build_ack(None, code="AR", reason_code="too_large",
                                            text=f"消息超过 {self.max_frame_bytes} 字节 / message larger than "
                                                 f"{self.max_frame_bytes} bytes")
                    writer.writeblock(ack)  # type: ignore[attr-defined]
                    await writer.drain()
                    break
                except InvalidBlockError:
                    log.warning("HL7 connection from %s sent data outside an MLLP block; closed", peer)
                    break
                ack = await loop.run_in_executor(self._executor, self._handle, raw, peer)
                writer.writeblock(ack)  # type: ignore[attr-defined]
                await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.info("HL7 connection from %s ended: %s", peer, exc)
        except asyncio.CancelledError:
            pass
        finally:
            self.connections -= 1
            with contextlib.suppress(Exception):
                writer.close()

    def _handle(self, raw: bytes, peer: str) -> bytes:
        return service.handle_bytes(self.db_factory, raw, peer=peer)


def start_listener(db_factory: sessionmaker[Session], *, host: str, port: int,
                   max_frame_bytes: int = MAX_FRAME_BYTES) -> Listener:
    """Listen for MLLP connections (port 0 picks a free port); returns once the socket is bound."""
    return Listener(db_factory, host=host, port=port, max_frame_bytes=max_frame_bytes).start()
