"""ASGI entry point for uvicorn; starts the in-process timer loop in the embedded setup."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import healthrelay.models  # noqa: F401 - every table and timer handler registered
from healthrelay.app import create_app
from healthrelay.core.config import get_settings
from healthrelay.core.db import get_sessionmaker
from healthrelay.core.timers import TimerThread


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    thread = None
    receiver = None
    if os.environ.get("HEALTHRELAY_RUN_TIMERS") == "1":
        thread = TimerThread(get_sessionmaker(), runner=f"web:{socket.gethostname()}:{os.getpid()}")
        thread.start()
    if os.environ.get("HEALTHRELAY_RUN_DICOM") == "1":
        from healthrelay.imaging.scp import start_receiver

        settings = get_settings()
        receiver = start_receiver(get_sessionmaker(), host=settings.dicom_host, port=settings.dicom_port,
                                  ae_title=settings.dicom_ae_title)
    listener = None
    if os.environ.get("HEALTHRELAY_RUN_HL7") == "1":
        from healthrelay.hl7.listener import start_listener

        settings = get_settings()
        listener = start_listener(get_sessionmaker(), host=settings.hl7_host, port=settings.hl7_port)
    yield
    if listener is not None:
        listener.shutdown()
    if receiver is not None:
        receiver.shutdown()
    if thread is not None:
        thread.stop_event.set()


app = create_app()
app.router.lifespan_context = lifespan
