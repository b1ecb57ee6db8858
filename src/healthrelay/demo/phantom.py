"""Synthetic DICOM studies for the demo county and the benchmarks: no real patient's images ship with us.

A CT "chest" is an elliptical body with two air-filled lungs, a spine and a heart; a CT "head" is a skull
with brain, optionally with a bright haemorrhage (a finding worth a critical result); a DR is one chest
radiograph. Values are Hounsfield units stored with rescale intercept -1024, as real scanners do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

_INTERCEPT = -1024


@dataclass(frozen=True)
class PatientModule:
    name: str  # DICOM PN, e.g. "Wang^Xiaoming=王^小明"
    patient_id: str
    birth_date: str  # YYYYMMDD
    sex: str  # M / F / O


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    return np.meshgrid(axis, axis)


def _chest_slice(size: int, z: float) -> np.ndarray:
    x, y = _grid(size)
    hu = np.full((size, size), -1000.0, dtype=np.float32)  # air
    hu[(x / 0.85) ** 2 + (y / 0.62) ** 2 <= 1] = 40  # soft tissue
    lung_scale = 0.9 - 0.4 * abs(z)
    for side in (-1, 1):
        hu[((x - side * 0.38) / (0.27 * lung_scale + 0.05)) ** 2 + ((y + 0.05) / (0.42 * lung_scale + 0.05)) ** 2
           <= 1] = -850
    hu[((x + 0.08) / 0.2) ** 2 + ((y + 0.1) / 0.18) ** 2 <= 1] = 45  # heart
    hu[(x / 0.07) ** 2 + ((y - 0.45) / 0.07) ** 2 <= 1] = 700  # vertebral body
    return hu


def _head_slice(size: int, z: float, bleed: bool) -> np.ndarray:
    x, y = _grid(size)
    hu = np.full((size, size), -1000.0, dtype=np.float32)
    r = max(0.2, 0.8 * (1 - z * z) ** 0.5)
    outer = (x / r) ** 2 + (y / (r * 1.15)) ** 2
    hu[outer <= 1] = 1200  # skull
    hu[outer <= 0.86] = 35  # brain
    hu[((x / (r * 0.12)) ** 2 + (y / (r * 0.5)) ** 2) <= 1] = 8  # ventricles (CSF)
    if bleed and abs(z) < 0.3:
        hu[((x - 0.3 * r) / 0.12) ** 2 + ((y + 0.1) / 0.09) ** 2 <= 1] = 70  # acute haemorrhage
    return hu


def _common(ds: Dataset, *, patient: PatientModule, study_uid: str, series_uid: str, accession: str,
            description: str, when: datetime, modality: str, sop_class: str, institution: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = description
    ds.Modality = modality
    ds.InstitutionName = institution
    ds.Manufacturer = "HealthRelay phantom"
    ds.ReferringPhysicianName = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0


def _encode(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ct_series(*, patient: PatientModule, slices: int, size: int = 512, body: str = "chest", bleed: bool = False,
              accession: str = "", when: datetime | None = None, institution: str = "",
              study_uid: str | None = None) -> Iterator[bytes]:
    """Part 10 files of one axial CT series, top to bottom (about size*size*2 bytes each)."""
    when = when or datetime(2026, 11, 23, 9, 0)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    thickness = 5.0 if body == "head" else 2.0
    spacing = (230.0 if body == "head" else 380.0) / size
    for index in range(slices):
        z = -1 + 2 * (index + 0.5) / slices
        hu = _head_slice(size, z, bleed) if body == "head" else _chest_slice(size, z)
        ds = Dataset()
        _common(ds, patient=patient, study_uid=study_uid, series_uid=series_uid, accession=accession,
                description="头颅 CT 平扫" if body == "head" else "胸部 CT 平扫", when=when, modality="CT",
                sop_class=CTImageStorage, institution=institution)
        ds.SeriesDescription = "Axial 5mm" if body == "head" else "Axial 2mm lung"
        ds.SeriesNumber = 2
        ds.InstanceNumber = index + 1
        ds.BodyPartExamined = "HEAD" if body == "head" else "CHEST"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [round(spacing, 4), round(spacing, 4)]
        ds.SliceThickness = thickness
        ds.ImagePositionPatient = [-size * spacing / 2, -size * spacing / 2, -index * thickness]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = -index * thickness
        ds.RescaleIntercept = _INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = ((40, 80) if body == "head" else (-600, 1500))
        ds.KVP = 120
        ds.PixelData = np.clip(hu - _INTERCEPT, 0, 4095).astype("<u2").tobytes()
        yield _encode(ds)


def dx_image(*, patient: PatientModule, size: int = 1024, accession: str = "", when: datetime | None = None,
             institution: str = "") -> bytes:
    """One PA chest radiograph (DX for presentation)."""
    when = when or datetime(2026, 11, 23, 9, 0)
    x, y = _grid(size)
    image = np.full((size, size), 300.0, dtype=np.float32)
    image[(x / 0.8) ** 2 + (y / 0.9) ** 2 <= 1] = 1800
    for side in (-1, 1):
        image[((x - side * 0.35) / 0.28) ** 2 + ((y + 0.05) / 0.6) ** 2 <= 1] = 700
    image[((x + 0.08) / 0.25) ** 2 + ((y - 0.2) / 0.25) ** 2 <= 1] = 2200
    image[np.abs(x) < 0.05] = 2600
    ds = Dataset()
    _common(ds, patient=patient, study_uid=generate_uid(), series_uid=generate_uid(), accession=accession,
            description="胸部正位片", when=when, modality="DX", sop_class=DigitalXRayImageStorageForPresentation,
            institution=institution)
    ds.SeriesDescription = "PA"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = ImagerPixelSpacing = [round(430.0 / size, 4)] * 2
    ds.ImagerPixelSpacing = ImagerPixelSpacing
    ds.WindowCenter, ds.WindowWidth = 1400, 2800
    ds.PixelData = np.clip(image, 0, 4095).astype("<u2").tobytes()
    return _encode(ds)
