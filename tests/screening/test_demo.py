"""The demo screening events: a past free clinic with findings turned into team tasks, a school check-up imported
with its bad rows reported, and a planned event next week."""

from __future__ import annotations

from datetime import date, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from healthrelay.chronic.models import ChronicTask
from healthrelay.core.db import LOCAL_TZ, utcnow
from healthrelay.demo.screening import SCHOOL_BAD_ROWS, build_demo_screening
from healthrelay.patients.models import Sex
from healthrelay.screening import service
from healthrelay.screening.models import ScreeningEvent, ScreeningImport, ScreeningResult
from tests import factories as f
from tests.screening.conftest import World


def test_the_demo_events(db: Session, world: World) -> None:
    adults = [f.patient(db, name=f"村民{'甲乙丙丁戊己庚辛壬癸'[i % 10]}{'一二三四五'[i % 5]}",
                        sex=Sex.MALE if i % 2 else Sex.FEMALE, birth_date=date(1940 + i % 40, 1 + i % 12, 1 + i % 27))
              for i in range(60)]
    for p in adults:
        p.area_id = world.village.id
    db.flush()
    now = utcnow()
    made = build_demo_screening(db, seed=5, now=now, patient_ids=[p.id for p in adults])
    db.commit()
    events = {e.kind: e for e in db.scalars(select(ScreeningEvent))}
    assert set(events) == {"free_clinic", "school_checkup", "mobile_checkup"} and made["screening_events"] == 3
    clinic, school, planned = events["free_clinic"], events["school_checkup"], events["mobile_checkup"]
    counts = service.event_counts(db, event_id=clinic.id)
    assert counts.people_served == 60 and counts.leaflets_given == 600  # every adult given (fewer than 400)
    assert counts.tasks_made == counts.abnormal_findings > 0
    tasks = db.scalars(select(ChronicTask).where(ChronicTask.kind == "screening")).all()
    assert any(t.status == "open" for t in tasks) and {t.team_id for t in tasks} == {world.team.id}
    assert school.status == "closed" and db.scalar(select(ScreeningImport.rows_failed)) == SCHOOL_BAD_ROWS
    assert made["school_students"] == service.event_counts(db, event_id=school.id).people_served > 250
    assert planned.status == "planned"
    assert planned.starts_at.astimezone(LOCAL_TZ).date() == now.astimezone(LOCAL_TZ).date() + timedelta(days=7)
    assert made["screening_results"] == db.scalar(select(func.count()).select_from(ScreeningResult))
