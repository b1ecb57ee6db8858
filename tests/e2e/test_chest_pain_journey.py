"""A STEMI found on a village ECG, end to end in a real browser, in the demo county.

The village doctor uploads a 12-lead ECG; the county ECG centre reads an inferior STEMI and signs; the
critical-result loop tells the village doctor; the dispatcher's board shows the transfer the ECG centre
raised, with a recommended ambulance and the PCI hospital as destination, and dispatches it; each of the
crew's state changes moves the dispatcher's board and the chest-pain board without a reload; the cath-lab
team records activation and balloon; the case shows its door-to-balloon time against the 90-minute target.

Five people at five screens, one browser context each.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.accounts.models import User
from healthrelay.core.db import utcnow
from healthrelay.demo.logins import DEMO_PASSWORD, logins
from healthrelay.ecg import formats, synthetic
from healthrelay.ecg.formats import Demographics
from healthrelay.emergency.models import Ambulance, EmergencyCall
from healthrelay.pathways.models import PathwayCase
from healthrelay.patients.models import Patient
from healthrelay.teleconsult.models import ConsultRequest, CriticalResult, CriticalState
from tests.browser import SCREENSHOTS, screens_for

pytestmark = pytest.mark.e2e

SHANGHAI = ZoneInfo("Asia/Shanghai")
LIVE = 20_000  # ms: live events arrive within a second or two; the boards also poll every 30 s as a fallback


@pytest.fixture
def screens(browser: Browser, live_server: str, built: list[str]) -> Iterator[dict[str, Page]]:
    people = ("village", "reader", "dispatcher", "crew", "cardio")
    with screens_for(browser, live_server, people, height=900, timeout_ms=20_000) as pages:
        yield pages


def _sign_in(page: Page, username: str) -> None:
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", DEMO_PASSWORD)
    page.press("#password", "Enter")
    expect(page).not_to_have_url(re.compile(r"/login"))


def _village_doctor() -> str:
    return next(d.username for d in logins() if d.username.startswith("vdoc."))


def _resident_of_the_village(db: Session) -> Patient:
    """The demo's resident of 石门村, on the panel of the village doctor's family-doctor team."""
    account = db.execute(select(User).where(User.username == "patient.shimen")).scalar_one()
    return db.get(Patient, account.patient_id)


def test_stemi_from_a_village_ecg_to_balloon(screens: dict[str, Page], db: Session, tmp_path: Path) -> None:
    village, reader, dispatcher, crew, cardio = (screens[k] for k in ("village", "reader", "dispatcher", "crew",
                                                                      "cardio"))
    vdoc = db.execute(select(User).where(User.username == _village_doctor())).scalar_one()
    patient = _resident_of_the_village(db)

    # The dispatcher and the cath-lab team keep their boards open from the start.
    _sign_in(dispatcher, "dispatch.city")
    dispatcher.goto("/emergency")
    expect(dispatcher.locator("#amb-h")).to_be_visible()
    _sign_in(cardio, "doc.cardio")
    cardio.goto("/pathways/chest_pain/board")

    # 1. The village doctor uploads a 12-lead ECG taken ten minutes ago (an inferior STEMI).
    taken = utcnow() - timedelta(minutes=10)
    tracing = synthetic.synthetic_12_lead(heart_rate=88, seed=5, st_elevation_mv=synthetic.INFERIOR_STEMI,
                                          demographics=Demographics(name=patient.name, sex=patient.sex.value),
                                          acquired_at=taken)
    ecg_file = tmp_path / "stemi.dcm"
    ecg_file.write_bytes(formats.to_dicom(tracing))
    _sign_in(village, vdoc.username)
    village.goto(f"/ecg/upload?patient_id={patient.id}")
    expect(village.locator("#upload-patient")).to_contain_text(patient.name)
    village.set_input_files("#files", str(ecg_file))
    village.check("#priority-emergency")
    village.fill("#clinical_question", "胸痛两小时，大汗")
    seen = (taken - timedelta(minutes=5)).astimezone(SHANGHAI)  # the village doctor saw the patient first
    village.fill("#first_contact_at", seen.strftime("%Y-%m-%dT%H:%M"))
    village.click("#upload-submit")
    expect(village).to_have_url(re.compile(r"/teleconsult/\d+"))
    request_id = int(re.search(r"/teleconsult/(\d+)", village.url).group(1))
    number = db.execute(select(ConsultRequest.number).where(ConsultRequest.id == request_id)).scalar_one()

    # 2. The county ECG centre finds it on its worklist, sees the tracing and the automatic read, and signs STEMI.
    _sign_in(reader, "reader.ecg")
    reader.goto("/ecg/worklist")
    expect(reader.locator("main")).to_contain_text(number)
    reader.click(f"#open-ecg-{request_id}")
    expect(reader.locator("#ecg-paper svg")).to_be_visible()
    expect(reader.locator("#auto-measurements")).to_contain_text("bpm")
    reader.click("#ecg-claim")
    stemi = reader.locator("#code-stemi_inferior")
    expect(stemi).to_be_checked()  # the automatic read suggested it; the reader agrees
    reader.click("#report-sign")
    expect(reader.locator("#report-critical")).to_be_visible()
    reader.screenshot(path=str(SCREENSHOTS / "chest-pain-1-ecg-signed.png"), full_page=True)

    # 3. The critical-result loop fires: the village doctor is told.
    db.expire_all()
    critical = db.execute(select(CriticalResult).where(CriticalResult.request_id == request_id)).scalar_one()
    assert critical.state == CriticalState.OPEN
    village.goto("/inbox")
    expect(village.locator("main")).to_contain_text(number)

    # 4. The chest-pain case is open and the ECG centre's transfer tops the dispatcher's board, live.
    case = db.execute(select(PathwayCase).where(PathwayCase.ecg_request_id == request_id)).scalar_one()
    call = db.execute(select(EmergencyCall).where(EmergencyCall.pathway_case_id == case.id)).scalar_one()
    row = dispatcher.locator(f'tr[data-call-id="{call.id}"]')
    expect(row).to_be_visible(timeout=LIVE)
    destination = row.locator(f"#dest-{call.id} option:checked")
    expect(destination).to_contain_text("县人民医院")
    expect(row.locator(".reasons")).to_contain_text("PCI")
    recommended = int(row.locator(f"#amb-{call.id}").input_value())
    dispatcher.screenshot(path=str(SCREENSHOTS / "chest-pain-2-dispatch-board.png"), full_page=True)
    row.locator(f"#dispatch-{call.id}").click()
    db.expire_all()
    call = db.get(EmergencyCall, call.id)
    assert call.ambulance_id == recommended and call.dispatched_at is not None
    dispatcher.goto("/emergency")
    ambulance_on_board = dispatcher.locator(f'li[data-ambulance-id="{recommended}"] .state')

    # The cath-lab team was pre-alerted and activates the lab before the patient arrives.
    cardio.goto(f"/pathways/cases/{case.id}")
    cardio.click("#now-cath_lab_activation")
    expect(cardio.locator("#timeline")).to_contain_text("导管室激活")

    # 5. The crew's state changes move the dispatcher's board and the chest-pain board without a reload.
    cardio.goto("/pathways/chest_pain/board")
    card = cardio.locator(f"#case-{case.id}")
    expect(card).to_contain_text(call.number)
    _sign_in(crew, "crew.city1")
    call_states = {"en_route": "已派车", "on_scene": "现场救治", "transporting": "转运中", "at_hospital": "已送达"}
    for state, call_state in call_states.items():
        crew.goto(f"/emergency/ambulances/{recommended}/crew")
        crew.click(f"#to-{state}")
        expect(crew.locator(".state").first).to_have_class(re.compile(f"state-{state}"))
        expect(ambulance_on_board).to_have_class(re.compile(f"state-{state}"), timeout=LIVE)
        expect(card).to_contain_text(call_state, timeout=LIVE)
    db.expire_all()
    ambulance = db.get(Ambulance, recommended)
    assert ambulance.state == "at_hospital"

    # 6. Balloon: the case shows its door-to-balloon time against the 90-minute target.
    cardio.goto(f"/pathways/cases/{case.id}")
    expect(cardio.locator("#case-arrival")).to_contain_text("救护车")
    cardio.click("#now-cath_lab_arrival")
    cardio.click("#now-wire_crossing")
    intervals = cardio.locator("#case-intervals")
    expect(intervals).to_contain_text(re.compile(r"D2B|进门-球囊"))
    expect(intervals).to_contain_text("90")
    expect(intervals).to_contain_text("✓")
    # The clock started at the village doctor's first contact, five minutes before the ECG.
    expect(intervals).to_contain_text(re.compile(r"首次医疗接触至首份心电图\s*[56]\s*分钟\s*< 10\s*✓"))
    cardio.screenshot(path=str(SCREENSHOTS / "chest-pain-3-case-d2b.png"), full_page=True)
