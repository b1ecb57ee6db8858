"""Orthanc interop scenario: run INSIDE a loopback-only network namespace (Orthanc binds every interface).

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/python tests/interop/orthanc_scenario.py WORKDIR'

It starts Debian's Orthanc (with its DICOMweb plugin) on a temporary configuration, a SQLite database
migrated in WORKDIR, our DICOM receiver and our web app on 127.0.0.1, then:

  A. archive: ingest with HEALTHRELAY_IMAGING_BACKEND=orthanc, read every instance back bit-identical
     (through the backend and through our WADO-RS), a re-send is a duplicate, a rolled-back ingest
     leaves nothing in Orthanc;
  B. exchange (our archive on local files again): Orthanc C-ECHOes us and sends a study to our receiver
     (its REST /modalities/{x}/store, Orthanc registered in our imaging_modalities); we send a study
     to Orthanc by C-STORE (pynetdicom) and by STOW-RS to its DICOMweb; both sides are then queried
     with QIDO-RS and the pixels compared.

Prints one JSON object on the last line of stdout and exits non-zero when a check failed.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ORTHANC_AE, OUR_AE = "ORTHANC", "HEALTHRELAY"
ORTHANC_USER, ORTHANC_PASSWORD = "healthrelay", "orthanc-test-secret"
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Checks:
    """Named boolean checks plus facts, all reported in the JSON result."""

    def __init__(self) -> None:
        self.checks: dict[str, bool] = {}
        self.facts: dict[str, Any] = {}

    def check(self, name: str, ok: bool, detail: Any = None) -> bool:
        self.checks[name] = bool(ok)
        if detail is not None and not ok:
            self.facts[f"{name}_detail"] = detail
        return bool(ok)


# --- Orthanc ------------------------------------------------------------------------------------------

def start_orthanc(work: Path, *, http_port: int, dicom_port: int, our_port: int) -> subprocess.Popen[bytes]:
    config = {
        "Name": "healthrelay-interop",
        "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"),
        "Plugins": [DICOMWEB_PLUGIN],
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ORTHANC_AE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
        "SyncStorageArea": True,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": {"healthrelay": [OUR_AE, "127.0.0.1", our_port]},
        "DicomScuTimeout": 30,
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    log = open(work / "orthanc.log", "wb")  # noqa: SIM115 - kept open for the child's lifetime
    proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT)
    return proc


def wait_http(url: str, auth: tuple[str, str] | None = None, timeout: float = 30) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, auth=auth, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.2)


# --- our side ---------------------------------------------------------------------------------------

def configure(work: Path, *, backend: str, orthanc_url: str) -> None:
    from healthrelay.core.db import reset_caches

    os.environ.update({
        "HEALTHRELAY_DATA_DIR": str(work / "data"),
        "HEALTHRELAY_DATABASE_URL": f"sqlite:///{work / 'healthrelay.sqlite3'}",
        "HEALTHRELAY_FAST_PASSWORD_HASH": "1",
        "HEALTHRELAY_ASSETS_DIR": str(ROOT / "node_modules"),
        "HEALTHRELAY_IMAGING_BACKEND": backend,
        "HEALTHRELAY_ORTHANC_URL": orthanc_url,
        "HEALTHRELAY_ORTHANC_USERNAME": ORTHANC_USER,
        "HEALTHRELAY_ORTHANC_PASSWORD": ORTHANC_PASSWORD,
    })
    os.environ.pop("HEALTHRELAY_RUN_TIMERS", None)
    reset_caches()


def seed() -> dict[str, Any]:
    """A township with Orthanc registered as one of its modalities, and a doctor with an API token."""
    from healthrelay.accounts.models import Role
    from healthrelay.accounts.service import create_user, issue_token
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.directory.models import Organisation, OrgKind, OrgLevel
    from healthrelay.imaging.models import Modality

    with get_sessionmaker()() as db:
        town = Organisation(code="INTEROP01", name="东山镇卫生院", level=OrgLevel.TOWNSHIP,
                            kind=OrgKind.TOWNSHIP_CENTRE, latitude=30.1, longitude=110.1)
        db.add(town)
        db.flush()
        db.add(Modality(ae_title=ORTHANC_AE, organisation_id=town.id, modality_type="CT", name="Orthanc PACS"))
        user = create_user(db, username="interop_doc", password="correct-horse-42", display_name="互操作医生",
                           role=Role.CLINICIAN, organisation_id=town.id)
        token, _ = issue_token(db, user=user)
        db.commit()
        return {"organisation_id": town.id, "user_id": user.id, "token": token}


def serve_app() -> tuple[Any, str]:
    import uvicorn

    import healthrelay.models  # noqa: F401
    from healthrelay.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("our app did not start")
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def new_instance(sample: str, *, study_uid: str | None = None, series_uid: str | None = None,
                 number: int = 1, patient_id: str = "INTEROP-1") -> tuple[Any, bytes]:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(get_testdata_file(sample))
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    ds.PatientID = patient_id
    ds.PatientName = "INTEROP^TEST"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return ds, out.getvalue()


def multipart_bodies(response: Any) -> list[bytes]:
    match = re.search(r"boundary=\"?([^\";]+)\"?", response.headers["content-type"])
    marker = b"--" + match.group(1).encode()  # type: ignore[union-attr]
    bodies = []
    for chunk in response.content.split(marker)[1:]:
        if chunk.startswith(b"--"):
            break
        body = chunk.partition(b"\r\n\r\n")[2]
        bodies.append(body[:-2] if body.endswith(b"\r\n") else body)
    return bodies


def ingest_committed(data: bytes, *, organisation_id: int, user_id: int) -> Any:
    from healthrelay.accounts.models import User
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.imaging import service

    with get_sessionmaker()() as db:
        stored = service.ingest(db, data=data, received_via="stow", organisation_id=organisation_id,
                                by_user=db.get(User, user_id))
        db.commit()
        return stored.instance.storage_backend, stored.instance.storage_key, stored.created


# --- A: Orthanc as our archive ------------------------------------------------------------------------

def part_archive(c: Checks, seeded: dict[str, Any], app_url: str, orthanc_url: str) -> None:
    import requests

    from healthrelay.accounts.models import User
    from healthrelay.core.db import get_sessionmaker
    from healthrelay.imaging import service
    from healthrelay.imaging.orthanc import OrthancStorage
    from healthrelay.imaging.storage import get_backend

    orthanc = OrthancStorage(orthanc_url, username=ORTHANC_USER, password=ORTHANC_PASSWORD)
    samples = ["CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm"]
    identical, wado_identical, keys_match = [], [], []
    headers = {"Authorization": f"Bearer {seeded['token']}"}
    rendered_ok = []
    for sample in samples:
        ds, data = new_instance(sample)
        backend, key, created = ingest_committed(data, organisation_id=seeded["organisation_id"],
                                                 user_id=seeded["user_id"])
        c.check(f"archive_{sample}_in_orthanc", backend == "orthanc" and created, {"backend": backend})
        keys_match.append(orthanc.find_instance(ds.SOPInstanceUID) == key)
        identical.append(get_backend("orthanc").read(key) == data)
        url = (f"{app_url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
               f"/instances/{ds.SOPInstanceUID}")
        wado = requests.get(url, headers={**headers, "Accept": 'multipart/related; type="application/dicom"; '
                                          "transfer-syntax=*"}, timeout=30)
        wado_identical.append(wado.status_code == 200 and multipart_bodies(wado) == [data])
        png = requests.get(f"{url}/frames/1/rendered", headers=headers, timeout=30)
        rendered_ok.append(png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n")
        if sample == "CT_small.dcm":
            again = ingest_committed(data, organisation_id=seeded["organisation_id"], user_id=seeded["user_id"])
            c.check("archive_resend_is_duplicate", again[2] is False and again[1] == key)
    c.facts["archive_samples"] = samples
    c.check("archive_keys_are_orthanc_ids", all(keys_match), keys_match)
    c.check("archive_bit_identical", all(identical), identical)
    c.check("archive_wado_bit_identical", all(wado_identical), wado_identical)
    c.check("archive_rendered_from_orthanc", all(rendered_ok), rendered_ok)

    # An ingest whose transaction rolls back leaves no instance behind in Orthanc.
    ds, data = new_instance("MR_small.dcm")
    with get_sessionmaker()() as db:
        service.ingest(db, data=data, received_via="stow", organisation_id=seeded["organisation_id"],
                       by_user=db.get(User, seeded["user_id"]))
        was_there = orthanc.find_instance(ds.SOPInstanceUID) is not None
        db.rollback()
    c.check("archive_rollback_removes_from_orthanc",
            was_there and orthanc.find_instance(ds.SOPInstanceUID) is None, {"stored_before_rollback": was_there})
    c.facts["orthanc_instances"] = len(orthanc._json("GET", "/instances"))


# --- B: exchanging studies with Orthanc as a peer ---------------------------------------------------------

def part_exchange(c: Checks, seeded: dict[str, Any], app_url: str, orthanc_url: str, orthanc_dicom_port: int,
                  our_port: int) -> None:
    import numpy as np
    import pydicom
    import requests
    from dicomweb_client.api import DICOMwebClient
    from pynetdicom import AE

    from healthrelay.core.db import get_sessionmaker
    from healthrelay.imaging.scp import start_receiver
    from healthrelay.imaging.storage import get_backend

    auth = (ORTHANC_USER, ORTHANC_PASSWORD)
    receiver = start_receiver(get_sessionmaker(), host="127.0.0.1", port=our_port, ae_title=OUR_AE)
    try:
        echo = requests.post(f"{orthanc_url}/modalities/healthrelay/echo", json={}, auth=auth, timeout=30)
        c.check("orthanc_echoes_us", echo.status_code == 200, echo.text[:200])

        # Orthanc → us: a study first stored in Orthanc, then pushed to our receiver.
        study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        sent = [new_instance("CT_small.dcm", study_uid=study_uid, series_uid=series_uid, number=n,
                             patient_id="FROM-ORTHANC") for n in (1, 2)]
        sent.append(new_instance("MR_small_RLE.dcm", study_uid=study_uid, patient_id="FROM-ORTHANC"))
        orthanc_study = ""
        for _, data in sent:
            answer = requests.post(f"{orthanc_url}/instances", data=data, auth=auth, timeout=30).json()
            orthanc_study = answer["ParentStudy"]
        store = requests.post(f"{orthanc_url}/modalities/healthrelay/store",
                              json={"Resources": [orthanc_study], "Synchronous": True}, auth=auth, timeout=60)
        c.check("orthanc_store_to_us_accepted", store.status_code == 200, store.text[:300])
        ours = DICOMwebClient(url=f"{app_url}/dicomweb", headers={"Authorization": f"Bearer {seeded['token']}"})
        found = ours.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
        c.check("our_qido_finds_orthancs_study", len(found) == 1 and found[0]["00201208"]["Value"] == [3],
                found)
        back = {ds.SOPInstanceUID: ds for ds in ours.retrieve_study(study_uid)}
        c.check("our_copy_has_same_pixels",
                len(back) == 3 and all(np.array_equal(back[ds.SOPInstanceUID].pixel_array, ds.pixel_array)
                                       for ds, _ in sent))
        with get_sessionmaker()() as db:
            from sqlalchemy import select

            from healthrelay.imaging.models import ImagingInstance, ImagingStudy
            row = db.execute(select(ImagingStudy).where(ImagingStudy.study_instance_uid == study_uid)).scalar_one()
            vias = {i.received_via + ":" + i.calling_ae_title for i in db.execute(
                select(ImagingInstance).where(ImagingInstance.study_id == row.id)).scalars()}
            c.check("received_over_dimse_from_orthanc", vias == {f"dimse:{ORTHANC_AE}"}, sorted(vias))
            c.check("study_belongs_to_orthancs_organisation", row.organisation_id == seeded["organisation_id"])

        # Us → Orthanc: a study in our archive, sent by C-STORE (two instances) and STOW-RS (one).
        our_study, our_series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        mine = [new_instance("CT_small.dcm", study_uid=our_study, series_uid=our_series, number=n,
                             patient_id="FROM-US") for n in (1, 2, 3)]
        keys = [ingest_committed(data, organisation_id=seeded["organisation_id"], user_id=seeded["user_id"])[1]
                for _, data in mine]
        ae = AE(ae_title=OUR_AE)
        ae.add_requested_context(mine[0][0].SOPClassUID, mine[0][0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", orthanc_dicom_port, ae_title=ORTHANC_AE)
        statuses = []
        if assoc.is_established:
            for key in keys[:2]:
                stored = pydicom.dcmread(io.BytesIO(get_backend("local").read(key)))
                status = assoc.send_c_store(stored)
                statuses.append(int(status.Status) if status else -1)
            assoc.release()
        c.check("c_store_to_orthanc", statuses == [0, 0], statuses)
        session = requests.Session()
        session.auth = auth
        theirs = DICOMwebClient(url=f"{orthanc_url}/dicom-web", session=session)
        stow = theirs.store_instances([pydicom.dcmread(io.BytesIO(get_backend("local").read(keys[2])))])
        c.check("stow_to_orthanc", len(stow.get("ReferencedSOPSequence", [])) == 1 and
                not stow.get("FailedSOPSequence"), str(stow)[:300])
        studies = theirs.search_for_studies(search_filters={"StudyInstanceUID": our_study})
        instances = theirs.search_for_instances(our_study)
        c.check("orthanc_qido_finds_our_study", len(studies) == 1 and len(instances) == 3,
                {"studies": len(studies), "instances": len(instances)})
        ds, _ = mine[0]
        copy = theirs.retrieve_instance(our_study, our_series, ds.SOPInstanceUID)
        c.check("orthancs_copy_has_same_pixels", np.array_equal(copy.pixel_array, ds.pixel_array))
        c.facts["exchange"] = {"orthanc_to_us": study_uid, "us_to_orthanc": our_study}
    finally:
        receiver.shutdown()


def main(work: Path) -> int:
    c = Checks()
    orthanc_http, orthanc_dicom, our_dicom = free_port(), free_port(), free_port()
    orthanc_url = f"http://127.0.0.1:{orthanc_http}"
    proc = None
    try:
        proc = start_orthanc(work, http_port=orthanc_http, dicom_port=orthanc_dicom, our_port=our_dicom)
        wait_http(f"{orthanc_url}/system", auth=(ORTHANC_USER, ORTHANC_PASSWORD))
        import requests

        c.check("orthanc_refuses_anonymous", requests.get(f"{orthanc_url}/system", timeout=5).status_code == 401)
        from healthrelay.core.migrate import upgrade

        configure(work, backend="orthanc", orthanc_url=orthanc_url)
        upgrade(os.environ["HEALTHRELAY_DATABASE_URL"])
        seeded = seed()
        server, app_url = serve_app()
        try:
            part_archive(c, seeded, app_url, orthanc_url)
            # Our own archive on local files again for the exchange (two archives, two copies).
            configure(work, backend="local", orthanc_url=orthanc_url)
            part_exchange(c, seeded, app_url, orthanc_url, orthanc_dicom, our_dicom)
        finally:
            server.should_exit = True
    except Exception:  # noqa: BLE001 - reported in the JSON result
        c.facts["error"] = traceback.format_exc()[-3000:]
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log = work / "orthanc.log"
        if log.exists():
            c.facts["orthanc_log_tail"] = log.read_text(errors="replace")[-1500:]
    ok = bool(c.checks) and all(c.checks.values()) and "error" not in c.facts
    if ok:
        c.facts.pop("orthanc_log_tail", None)
    print(json.dumps({"ok": ok, "checks": c.checks, "facts": c.facts}, ensure_ascii=False, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: orthanc_scenario.py WORKDIR (inside `unshare -n`)", file=sys.stderr)
        sys.exit(2)
    workdir = Path(sys.argv[1]).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "data", ignore_errors=True)
    sys.exit(main(workdir))
