"""The tele-ECG world: the teleconsult alliance (a county ECG centre, a township that sends), plus synthetic
tracings written in the formats devices send."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.ecg import formats
from healthrelay.ecg.formats import Demographics, Tracing
from healthrelay.ecg.synthetic import INFERIOR_STEMI, synthetic_12_lead
from healthrelay.patients.identity import make_resident_id
from healthrelay.patients.models import IdentifierType, PatientIdentifier
from tests.teleconsult.conftest import TeleWorld, build_world

RESIDENT_ID = make_resident_id("330100", date(1956, 3, 8), 12, "F")
# What the township's ECG cart records for the world's patient (王秀英, born 1956-03-08).
PATIENT_DEMOGRAPHICS = Demographics(name="王秀英", resident_id=RESIDENT_ID, birth_date=date(1956, 3, 8), sex="F")
NAME_ONLY = Demographics(name="王秀英", birth_date=date(1956, 3, 8), sex="F")


def build_ecg_world(db: Session) -> TeleWorld:
    """The teleconsult world; the patient carries a resident ID, as the township's devices record it."""
    world = build_world(db)
    db.add(PatientIdentifier(patient_id=world.patient.id, type=IdentifierType.RESIDENT_ID, value=RESIDENT_ID))
    db.commit()
    return world


@pytest.fixture
def tele(db: Session) -> TeleWorld:
    return build_ecg_world(db)


def tracing(*, seed: int = 1, heart_rate: float = 72, stemi: bool = False, sample_rate: int = 500,
            demographics: Demographics | None = PATIENT_DEMOGRAPHICS, acquired_at: datetime | None = None) -> Tracing:
    """A synthetic 10 s 12-lead at 500 Hz with a device's small noise (a noiseless one looks clipped)."""
    return synthetic_12_lead(heart_rate=heart_rate, seed=seed, sample_rate=sample_rate, noise_mv=0.01,
                             st_elevation_mv=INFERIOR_STEMI if stemi else None,
                             demographics=demographics or Demographics(),
                             acquired_at=acquired_at or (utcnow() - timedelta(minutes=5)).replace(microsecond=0))


def dicom(tr: Tracing, name: str = "ecg.dcm") -> dict[str, bytes]:
    return {name: formats.to_dicom(tr)}


def csv(tr: Tracing) -> dict[str, bytes]:
    return {"ecg.csv": formats.to_csv(tr)}


def aecg(tr: Tracing) -> dict[str, bytes]:
    return {"ecg.xml": formats.to_aecg(tr)}


def without(tr: Tracing, *leads: str) -> Tracing:
    return Tracing(leads={k: v for k, v in tr.leads.items() if k not in leads}, sample_rate=tr.sample_rate,
                   source_format=tr.source_format, demographics=tr.demographics, acquired_at=tr.acquired_at,
                   device=tr.device, uid="")


def flat(tr: Tracing, lead: str) -> Tracing:
    leads = dict(tr.leads)
    leads[lead] = np.zeros_like(leads[lead])
    return Tracing(leads=leads, sample_rate=tr.sample_rate, source_format=tr.source_format,
                   demographics=tr.demographics, acquired_at=tr.acquired_at, device=tr.device, uid="")
