"""Response and request shapes of the imaging API (the studies list, one study for the viewer, linking)."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

from healthrelay.imaging.models import PatientMatch


class PatientBrief(BaseModel):
    """The patient as lists and the viewer show them: masked name and ID, enough to recognise, not identify."""

    id: int
    masked_name: str
    sex: str
    age: int | None = None
    masked_id: str = ""


class OrganisationBrief(BaseModel):
    id: int
    name: str


class ConsultBrief(BaseModel):
    id: int
    number: str
    state: str
    priority: str


class Window(BaseModel):
    center: float
    width: float


class InstanceOut(BaseModel):
    """What the viewer needs to show one instance without opening the file."""

    sop_instance_uid: str
    instance_number: int | None = None
    slice_location: float | None = None
    frames: int = 1
    rows: int | None = None
    columns: int | None = None
    # (row spacing, column spacing) in mm: PixelSpacing, else ImagerPixelSpacing (projection radiographs).
    pixel_spacing: list[float] | None = None
    window: Window | None = None
    photometric: str = ""


class SeriesOut(BaseModel):
    series_instance_uid: str
    series_number: int | None = None
    description: str = ""
    modality: str = ""
    body_part: str = ""
    instance_count: int
    frame_count: int
    # The rendered middle frame (small thumbnail in the series list).
    thumbnail_url: str = ""
    instances: list[InstanceOut] = Field(default_factory=list)


class PriorOut(BaseModel):
    """Another study of the same patient, from any member of the alliance."""

    study_instance_uid: str
    study_date: date | None = None
    description: str = ""
    modality: str = ""
    organisation: OrganisationBrief | None = None
    number_of_series: int = 0
    number_of_instances: int = 0
    viewer_url: str


class StudySummary(BaseModel):
    """One row of the studies list."""

    id: int
    study_instance_uid: str
    study_date: date | None = None
    study_time: str = ""
    description: str = ""
    modality: str = ""
    accession_number: str = ""
    patient_match: PatientMatch
    patient: PatientBrief | None = None
    # What the device sent (masked), so staff can find the right resident for an unmatched study.
    dicom_patient_name_masked: str = ""
    organisation: OrganisationBrief | None = None
    consult_request: ConsultBrief | None = None
    number_of_series: int = 0
    number_of_instances: int = 0
    received_at: datetime
    viewer_url: str
    can_link_patient: bool = False


class StudyPage(BaseModel):
    items: list[StudySummary]
    # Pass as `cursor` to get the next (older) page; null when this is the last page.
    next_cursor: str | None = None


class StudyDetail(StudySummary):
    """The study as the viewer loads it: series in order, instances in viewing order, priors newest first."""

    match_note: str = ""
    referring_physician: str = ""
    dicom_patient_name: str = ""
    dicom_patient_id: str = ""
    dicom_birth_date: str = ""
    dicom_sex: str = ""
    series: list[SeriesOut] = Field(default_factory=list)
    priors: list[PriorOut] = Field(default_factory=list)
    # True when the user may read this study (their organisation holds it) but has no care
    # relationship with the patient, so the patient's other studies are not listed.
    priors_withheld: bool = False


class LinkPatientIn(BaseModel):
    """Link a flagged (unmatched) study to a resident by hand."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient_id: int
    note: str = Field(default="", max_length=200)
