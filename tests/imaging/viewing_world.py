"""A small county for the imaging list, API, viewer and browser tests: a township that sends CT to the
county hospital's imaging centre (a routing rule), another township, a resident with a resident ID, and
helpers that ingest whole series through imaging.service.ingest (H1's path, as the receiver does)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import Role, User
from healthrelay.directory.models import Organisation, OrgKind, OrgLevel
from healthrelay.imaging import service
from healthrelay.imaging.models import ImagingStudy
from healthrelay.patients.identity import make_resident_id
from healthrelay.patients.models import IdentifierType, Patient, PatientIdentifier
from healthrelay.teleconsult.models import ConsultKind, Priority, ReadingCentre, RoutingRule
from tests import factories as f
from tests.imaging.conftest import ImagingSite, make_dataset, to_bytes


@dataclass
class ViewingWorld:
    site: ImagingSite  # township 东山镇 with CT modality TOWNCT1 and its doctor
    county: Organisation
    centre: ReadingCentre
    other_town: Organisation
    town_doctor: User
    other_doctor: User  # 西河镇: no relationship with anyone here
    county_reader: User  # remote reader at the county imaging centre
    bureau: User
    patient: Patient  # 王秀英, registered at 东山镇
    resident_id: str


def build(db: Session, site: ImagingSite) -> ViewingWorld:
    county = f.organisation(db, name="青溪县人民医院", level=OrgLevel.SECONDARY, kind=OrgKind.GENERAL_HOSPITAL)
    other_town = f.organisation(db, name="西河镇卫生院")
    centre = ReadingCentre(code="QX-IMG", name="青溪县远程影像诊断中心", kind=ConsultKind.IMAGING,
                           organisation_id=county.id)
    db.add(centre)
    db.flush()
    db.add(RoutingRule(modality_type="CT", centre_id=centre.id, priority=Priority.ROUTINE))
    other_doctor = f.user(db, organisation=other_town, username="xihe_doc")
    county_reader = f.user(db, organisation=county, role=Role.REMOTE_READER, username="county_reader")
    bureau = f.user(db, role=Role.HEALTH_BUREAU, username="bureau", with_practitioner=False)
    patient = f.patient(db, name="王秀英", registered_at=site.township)
    number = make_resident_id("421122", date(1956, 3, 8), 7, "F")
    db.add(PatientIdentifier(patient_id=patient.id, type=IdentifierType.RESIDENT_ID, value=number))
    db.commit()
    return ViewingWorld(site=site, county=county, centre=centre, other_town=other_town, town_doctor=site.doctor,
                        other_doctor=other_doctor, county_reader=county_reader, bureau=bureau, patient=patient,
                        resident_id=number)


def ingest_series(db: Session, *, organisation_id: int, patient_id: str, patient_name: str = "WANG^XIUYING",
                  study_uid: str | None = None, series_uid: str | None = None, count: int = 3,
                  instance_numbers: list[int | None] | None = None, study_date: str = "20261120",
                  description: str = "胸部CT平扫", series_number: int = 2, series_description: str = "肺 5mm",
                  window: tuple[float, float] | None = None) -> ImagingStudy:
    """`count` CT slices (pydicom's CT_small, each with different pixels) in one series, committed."""
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    numbers = instance_numbers if instance_numbers is not None else list(range(1, count + 1))
    for k, number in enumerate(numbers):
        ds = make_dataset("CT_small.dcm", patient_name=patient_name, patient_id=patient_id,
                          birth_date="19560308", sex="F", study_uid=study_uid, series_uid=series_uid,
                          charset="ISO_IR 192")
        if number is None:
            del ds.InstanceNumber
        else:
            ds.InstanceNumber = number
        ds.SliceLocation = float(k * 5)
        ds.StudyDate = study_date
        ds.StudyDescription = description
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        # A different picture on every slice: shift the rows, brighten a band.
        pixels = np.roll(ds.pixel_array, 12 * k, axis=0).astype(np.int16)
        pixels[(10 * k) % 100:(10 * k) % 100 + 12, :] += 300
        ds.PixelData = pixels.tobytes()
        service.ingest(db, data=to_bytes(ds), received_via="stow", organisation_id=organisation_id)
        db.commit()
    return db.execute(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid)).scalar_one()
