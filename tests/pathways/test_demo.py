"""The demo year of pathway cases: the right sizes, every timeline in order, most cases on target."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from healthrelay.core.db import utcnow
from healthrelay.demo.pathways import build_demo_pathways
from healthrelay.pathways import metrics, service
from healthrelay.pathways.models import CaseState, PathwayCase, PathwayNode
from tests.pathways.conftest import PathwayWorld


def test_a_year_of_cases_in_order_with_open_ones_on_the_boards(db: Session, world: PathwayWorld) -> None:
    now = utcnow()
    made = build_demo_pathways(db, seed=7, now=now)
    db.commit()
    assert (made["chest_pain"], made["stroke"], made["open"]) == (153, 602, 5)
    nodes: dict[int, dict[str, datetime]] = {}
    for n in db.execute(select(PathwayNode)).scalars():
        nodes.setdefault(n.case_id, {})[n.node] = n.at
    cases = list(db.execute(select(PathwayCase)).scalars())
    assert len(cases) == made["cases"] and len(nodes) == len(cases)
    for case in cases:
        pairs = service.order_pairs(db, case.centre)
        known = {d.code for d in service.node_definitions(db, case.centre)}
        timeline = nodes[case.id]
        assert set(timeline) <= known
        assert all(timeline[a] <= timeline[b] for a, b in pairs if a in timeline and b in timeline), case.number
        assert max(timeline.values()) <= now
    board = service.open_cases(db, centre="chest_pain", user=world.cardiologist)
    assert len(board) == 3 and all(c.state == CaseState.OPEN for c in board)
    first, last = metrics.default_period(now.astimezone(service._SHANGHAI).date())
    result = {s.target.code: s for s in metrics.compute(db, first_month=first, last_month=last)}
    d2b_cases = sum(m.cases for m in result["d2b"].months)
    d2b_on = sum(m.on_target for m in result["d2b"].months)
    assert 50 < d2b_cases < 110 and 0.75 < d2b_on / d2b_cases < 0.99  # most on target, some missed
    dnt_cases = sum(m.cases for m in result["dnt"].months)
    dnt_on = sum(m.on_target for m in result["dnt"].months)
    assert dnt_cases > 100 and 0.7 < dnt_on / dnt_cases < 0.99
    bypass = [m for m in result["bypass_ed"].months if m.cases]
    assert sum(m.on_target for m in bypass) / sum(m.cases for m in bypass) >= 0.3
    sent = [m for m in result["prehospital_ecg"].months if m.cases]
    assert 0.3 <= sum(m.on_target for m in sent) / sum(m.cases for m in sent) < 0.9
