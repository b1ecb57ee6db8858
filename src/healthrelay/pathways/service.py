"""Time-critical pathways (五大中心): opening a case, recording its timestamped nodes, links, closing.

Every rule lives here: which nodes a centre records and the partial order a timeline respects come from
data (`pathway_node_definitions`, `pathway_node_orders`, seeded by migration 0012), checked transitively, so
"balloon before cath-lab activation" is refused with both names and times. A node is recorded once; a
correction needs a reason and keeps the old time in `pathway_events`. Every change is audited and published
live (`pathway.changed`) to the parties' organisation topics after commit, so boards move without reload.

Other domains call `open_case` (the ECG centre on a STEMI, the 120 centre on a call), `record_node` (crew
and dispatch times), `link` and `close`.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import exists, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import Role, User
from healthrelay.audit import service as audit
from healthrelay.core.db import take_sqlite_write_lock, utcnow
from healthrelay.core.errors import AccessDenied, Conflict, InvalidInput, NotFound, field_error
from healthrelay.directory.models import Organisation
from healthrelay.notifications import service as notifications
from healthrelay.pathways.models import (
    CaseState,
    Centre,
    MetricTarget,
    NodeDefinition,
    NodeOrder,
    PathwayCase,
    PathwayEvent,
    PathwayNode,
)

_SHANGHAI = ZoneInfo("Asia/Shanghai")
NUMBER_PREFIX = {Centre.CHEST_PAIN: "XT", Centre.STROKE: "CZ", Centre.TRAUMA: "CS", Centre.MATERNAL: "YF",
                 Centre.NEONATAL: "XS"}
CENTRE_ZH = {Centre.CHEST_PAIN: "胸痛中心", Centre.STROKE: "卒中中心", Centre.TRAUMA: "创伤中心",
             Centre.MATERNAL: "危重孕产妇救治中心", Centre.NEONATAL: "危重新生儿救治中心"}
CENTRE_EN = {Centre.CHEST_PAIN: "chest pain centre", Centre.STROKE: "stroke centre", Centre.TRAUMA: "trauma centre",
             Centre.MATERNAL: "critical maternal centre", Centre.NEONATAL: "critical neonatal centre"}
SOURCES = ("ecg", "call", "walk_in", "manual")
NODE_SOURCES = ("manual", "ecg", "call", "device", "import")
ARRIVAL_MODES = ("ambulance", "self", "transfer", "")
DIAGNOSIS_CODES = ("stemi", "nstemi", "ua", "aortic_dissection", "ischaemic_stroke", "haemorrhagic_stroke",
                   "trauma", "maternal", "neonatal", "other", "")
# An open case of the same centre for the same patient opened this recently is the same episode.
REUSE_WINDOW = timedelta(hours=24)
# Clocks of devices and phones drift: a node a little ahead of the server is accepted.
FUTURE_SLACK = timedelta(minutes=2)
# Cases may be entered afterwards (from paper records), but not from before the platform's era: a typo.
EARLIEST_YEAR = 2000
CARE_RELATIONSHIP_DAYS_AFTER = 30
RECORDER_ROLES = frozenset({Role.CLINICIAN, Role.REMOTE_READER, Role.DISPATCHER, Role.ORG_ADMIN})
VIEWER_ROLES = RECORDER_ROLES | {Role.PHARMACIST}
LIVE_EVENT = "pathway.changed"


def _actor(user: User | None, client_address: str = "") -> audit.Actor:
    return access.actor_of(user, client_address) if user is not None else audit.Actor(username="system")


def _hhmm(at: datetime, other: datetime | None = None) -> str:
    """08:40, with the date when the two times are on different days."""
    local = at.astimezone(_SHANGHAI)
    if other is not None and other.astimezone(_SHANGHAI).date() != local.date():
        return local.strftime("%m-%d %H:%M")
    return local.strftime("%H:%M")


# --- the rules as data ----------------------------------------------------------------------------

def centre_of(value: str | Centre) -> Centre:
    try:
        return Centre(value)
    except ValueError:
        raise InvalidInput(f"未知的中心“{value}” / unknown centre {value!r} (chest_pain, stroke, trauma, maternal, "
                           "neonatal)", field_errors=[field_error("centre", "unknown centre")]) from None


def node_definitions(db: Session, centre: str | Centre) -> list[NodeDefinition]:
    """The centre's nodes in display order."""
    return list(db.execute(select(NodeDefinition).where(NodeDefinition.centre == str(centre))
                           .order_by(NodeDefinition.position, NodeDefinition.code)).scalars())


def _orders(db: Session, centre: str) -> tuple[tuple[str, str], ...]:
    rows = db.execute(select(NodeOrder.before, NodeOrder.after).where(NodeOrder.centre == centre)
                      .order_by(NodeOrder.id)).all()
    return tuple((str(b), str(a)) for b, a in rows)


@lru_cache(maxsize=64)
def _closure(pairs: tuple[tuple[str, str], ...]) -> frozenset[tuple[str, str]]:
    """Every (a, b) with a ≤ b implied by the pairs (transitively), so a gap in the timeline still checks."""
    after: dict[str, set[str]] = {}
    for before, later in pairs:
        after.setdefault(before, set()).add(later)
    out: set[tuple[str, str]] = set()
    for start in after:
        stack, seen = list(after[start]), set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            out.add((start, node))
            stack.extend(after.get(node, ()))
    return frozenset(out)


def order_pairs(db: Session, centre: str | Centre) -> frozenset[tuple[str, str]]:
    return _closure(_orders(db, str(centre)))


def metric_targets(db: Session, centre: str | Centre | None = None) -> list[MetricTarget]:
    q = select(MetricTarget).where(MetricTarget.is_active.is_(True))
    if centre is not None:
        q = q.where(MetricTarget.centre == str(centre))
    return list(db.execute(q.order_by(MetricTarget.centre, MetricTarget.position, MetricTarget.id)).scalars())


def metric_target(db: Session, centre: str | Centre, code: str) -> MetricTarget | None:
    return db.execute(select(MetricTarget).where(MetricTarget.centre == str(centre), MetricTarget.code == code,
                                                 MetricTarget.is_active.is_(True))).scalar()


def diagnosis_code_of(diagnosis: str) -> str:
    """A best guess from free text (the ECG conclusion, the dispatcher's words) when no code is given."""
    low = diagnosis.lower()
    if "nstemi" in low or "非st段抬高" in low:
        return "nstemi"
    if "stemi" in low or "st段抬高" in low:
        return "stemi"
    return ""


# --- loading and naming ---------------------------------------------------------------------------

def load(db: Session, case_id: int) -> PathwayCase:
    case = db.get(PathwayCase, case_id)
    if case is None:
        raise NotFound(f"没有编号为 {case_id} 的急救病例 / no pathway case {case_id}")
    return case


def nodes_of(db: Session, case: PathwayCase | int) -> dict[str, PathwayNode]:
    cid = case if isinstance(case, int) else case.id
    return {n.node: n for n in db.execute(select(PathwayNode).where(PathwayNode.case_id == cid)
                                          .order_by(PathwayNode.at, PathwayNode.id)).scalars()}


def events_of(db: Session, case: PathwayCase) -> list[PathwayEvent]:
    return list(db.execute(select(PathwayEvent).where(PathwayEvent.case_id == case.id)
                           .order_by(PathwayEvent.at, PathwayEvent.id)).scalars())


def _new_number(case: PathwayCase) -> str:
    day = case.opened_at.astimezone(_SHANGHAI).strftime("%Y%m%d")
    return f"{NUMBER_PREFIX[Centre(case.centre)]}{day}-{case.id:04d}"


def _emergency_call(db: Session, call_id: int) -> Any | None:
    """The emergency domain's call row (imported late: that domain calls this one)."""
    from healthrelay.emergency.models import EmergencyCall

    return db.get(EmergencyCall, call_id)


def call_organisations(db: Session, call_id: int | None) -> set[int]:
    """The organisations working a call: the 120 station and its crew, the sender, the destination."""
    if call_id is None:
        return set()
    call = _emergency_call(db, call_id)
    if call is None:
        return set()
    orgs = {getattr(call, name, None) for name in ("station_organisation_id", "from_organisation_id",
                                                    "destination_organisation_id")}
    users = [u for u in (getattr(call, "created_by_user_id", None), getattr(call, "dispatched_by_user_id", None))
             if u is not None]
    if users:
        orgs |= set(db.execute(select(User.organisation_id).where(User.id.in_(users))).scalars())
    return {o for o in orgs if o is not None}


def party_organisations(db: Session, case: PathwayCase) -> set[int]:
    """The receiving hospital, the organisation that opened the case, those working its call, and both ends of
    its tele-ECG (the clinic that recorded it, the centre that read it)."""
    from healthrelay.teleconsult.models import ConsultRequest

    orgs = {o for o in (case.hospital_organisation_id, case.opened_organisation_id) if o is not None}
    if case.ecg_request_id is not None:
        ecg = db.get(ConsultRequest, case.ecg_request_id)
        if ecg is not None:
            orgs |= {ecg.inviting_organisation_id, ecg.invited_organisation_id}
    return orgs | call_organisations(db, case.call_id)


def may_record(db: Session, *, user: User, case: PathwayCase) -> bool:
    """Staff of a party organisation (the hospital, the opener, the dispatchers and crew of the call)."""
    return (user.is_active and user.role in RECORDER_ROLES and user.organisation_id is not None
            and user.organisation_id in party_organisations(db, case))


def require_recorder(db: Session, *, user: User, case: PathwayCase, client_address: str = "") -> None:
    if not may_record(db, user=user, case=case):
        audit.record_now(actor=_actor(user, client_address), action="pathway.write", outcome="denied",
                         patient_id=case.patient_id, resource=f"pathway:{case.id}", db=db)
        raise AccessDenied("只有接诊医院、开启病例的机构和该次急救的调度与出车人员可以记录 / only staff of the "
                           "receiving hospital, of the opening organisation and of the call's dispatch and crew "
                           "may record on this case")


def get_case_for(db: Session, *, case_id: int, user: User, client_address: str = "") -> PathwayCase:
    """A case for one of its parties (or the alliance admin), audited; 403 for everyone else."""
    case = load(db, case_id)
    party = user.organisation_id is not None and user.organisation_id in party_organisations(db, case)
    if user.role == Role.ALLIANCE_ADMIN or (party and user.role in VIEWER_ROLES):
        audit.record(db, actor=_actor(user, client_address), action="pathway.read", patient_id=case.patient_id,
                     resource=f"pathway:{case.id}", purpose="pathway_party")
        return case
    audit.record_now(actor=_actor(user, client_address), action="pathway.read", outcome="denied",
                     patient_id=case.patient_id, resource=f"pathway:{case.id}", db=db)
    raise AccessDenied("只有该急救病例相关机构的人员可以查看 / only staff of the organisations on this case may "
                       "see it")


# --- live updates ---------------------------------------------------------------------------------

def publish(db: Session, case: PathwayCase, *, action: str, **extra: Any) -> None:
    """Boards and case pages of every party refresh; the event carries ids and codes, never names."""
    for org_id in sorted(party_organisations(db, case)):
        notifications.publish(db, topic=notifications.org_topic(org_id), event={
            "type": LIVE_EVENT, "case_id": case.id, "centre": str(case.centre), "state": str(case.state),
            "action": action, **extra})


def _event(db: Session, case: PathwayCase, *, kind: str, by: User | None, node: str = "",
           old_at: datetime | None = None, new_at: datetime | None = None, reason: str = "",
           detail: dict[str, Any] | None = None) -> PathwayEvent:
    row = PathwayEvent(case_id=case.id, kind=kind, node=node, old_at=old_at, new_at=new_at,
                       by_user_id=by.id if by else None, at=utcnow(), reason=reason, detail=detail or {})
    db.add(row)
    return row


# --- opening a case -------------------------------------------------------------------------------

def _lock_patient_centre(db: Session, patient_id: int, centre: Centre) -> None:
    """Two openings for one patient at once (the ECG centre and the 120 centre) must not both insert."""
    if db.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"pathway:{centre}:{patient_id}".encode())
        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    else:
        take_sqlite_write_lock(db)


def _check_links(db: Session, *, call_id: int | None, ecg_request_id: int | None,
                 hospital_organisation_id: int | None, arrival_mode: str | None,
                 errors: list[dict[str, Any]]) -> None:
    from healthrelay.teleconsult.models import ConsultRequest

    if hospital_organisation_id is not None and db.get(Organisation, hospital_organisation_id) is None:
        errors.append(field_error("hospital_organisation_id", f"没有编号为 {hospital_organisation_id} 的机构 / "
                                  f"no organisation {hospital_organisation_id}"))
    if ecg_request_id is not None and db.get(ConsultRequest, ecg_request_id) is None:
        errors.append(field_error("ecg_request_id", f"没有编号为 {ecg_request_id} 的心电会诊请求 / "
                                  f"no ECG request {ecg_request_id}"))
    if call_id is not None and _emergency_call(db, call_id) is None:
        errors.append(field_error("call_id", f"没有编号为 {call_id} 的急救呼叫 / no emergency call {call_id}"))
    if arrival_mode is not None and arrival_mode not in ARRIVAL_MODES:
        errors.append(field_error("arrival_mode", f"未知的到院方式“{arrival_mode}” / unknown arrival mode "
                                  "(ambulance, self, transfer)"))


def _recent_open_case(db: Session, *, centre: Centre, patient_id: int) -> PathwayCase | None:
    since = utcnow() - REUSE_WINDOW
    return db.execute(select(PathwayCase).where(
        PathwayCase.patient_id == patient_id, PathwayCase.centre == centre, PathwayCase.opened_at >= since,
        PathwayCase.state == CaseState.OPEN).order_by(PathwayCase.opened_at.desc(), PathwayCase.id.desc())
        .limit(1)).scalar()


def open_case(db: Session, *, centre: str, patient_id: int | None, by: User | None, source: str,
              call_id: int | None = None, ecg_request_id: int | None = None,
              hospital_organisation_id: int | None = None, diagnosis: str = "",
              nodes: Mapping[str, datetime] | None = None, client_address: str = "",
              diagnosis_code: str = "", arrival_mode: str | None = None, bypass_ed: bool | None = None,
              opened_organisation_id: int | None = None) -> PathwayCase:
    """Open a case, or reuse the patient's open case of the same centre from the last 24 hours.

    Reuse fills in the links that are still empty and records the given nodes not yet present, so the ECG
    centre and the 120 centre opening for one STEMI patient make one case, never two. An unidentified patient
    (patient_id None) always gets a new case. Nodes are checked like `record_node`; any refusal writes nothing.
    """
    the_centre = centre_of(centre)
    errors: list[dict[str, Any]] = []
    if source not in SOURCES:
        errors.append(field_error("source", f"未知的来源“{source}” / unknown source (ecg, call, walk_in, manual)"))
    code = diagnosis_code or diagnosis_code_of(diagnosis)
    if code not in DIAGNOSIS_CODES:
        errors.append(field_error("diagnosis_code", f"未知的诊断代码“{code}” / unknown diagnosis code"))
    if by is not None and (by.organisation_id is None or by.role not in RECORDER_ROLES):
        raise AccessDenied("只有机构的医务人员或调度员可以开启急救病例 / only an organisation's clinical staff or "
                           "dispatchers open pathway cases")
    _check_links(db, call_id=call_id, ecg_request_id=ecg_request_id,
                 hospital_organisation_id=hospital_organisation_id, arrival_mode=arrival_mode, errors=errors)
    opener = opened_organisation_id if opened_organisation_id is not None else (by.organisation_id if by else None)
    if opened_organisation_id is not None and db.get(Organisation, opened_organisation_id) is None:
        errors.append(field_error("opened_organisation_id", f"没有编号为 {opened_organisation_id} 的机构 / "
                                  f"no organisation {opened_organisation_id}"))
    if errors:
        raise InvalidInput("急救病例信息有误 / the case has errors: " + "; ".join(e["message"] for e in errors),
                           field_errors=errors)
    patient = access.resolve_patient(db, patient_id) if patient_id is not None else None
    existing = None
    if patient is not None:
        _lock_patient_centre(db, patient.id, the_centre)
        existing = _recent_open_case(db, centre=the_centre, patient_id=patient.id)
    if existing is not None:
        return _reuse(db, existing, by=by, call_id=call_id, ecg_request_id=ecg_request_id,
                      hospital_organisation_id=hospital_organisation_id, diagnosis=diagnosis.strip(),
                      diagnosis_code=code, arrival_mode=arrival_mode, bypass_ed=bypass_ed, nodes=nodes or {},
                      source=source, client_address=client_address)
    now = utcnow()
    case = PathwayCase(
        number=f"tmp-{uuid.uuid4().hex[:30]}", centre=the_centre,
        patient_id=patient.id if patient else None, state=CaseState.OPEN, source=source,
        hospital_organisation_id=hospital_organisation_id, opened_organisation_id=opener,
        ecg_request_id=ecg_request_id, call_id=call_id, arrival_mode=arrival_mode or "", bypass_ed=bypass_ed,
        diagnosis=diagnosis.strip(), diagnosis_code=code, opened_at=now, opened_by_user_id=by.id if by else None,
        updated_at=now)
    db.add(case)
    db.flush()
    case.number = _new_number(case)
    _event(db, case, kind="open", by=by, detail={"source": source, "call_id": call_id,
                                                 "ecg_request_id": ecg_request_id})
    audit.record(db, actor=_actor(by, client_address), action="pathway.open", patient_id=case.patient_id,
                 resource=f"pathway:{case.id}", detail={"centre": str(the_centre), "source": source})
    db.flush()
    node_source = source if source in NODE_SOURCES else "manual"
    for node, at in _in_time_order(nodes or {}):
        _record(db, case, node=node, at=at, by=by, source=node_source, client_address=client_address)
    publish(db, case, action="open")
    return case


def _in_time_order(nodes: Mapping[str, datetime]) -> list[tuple[str, datetime]]:
    return sorted(nodes.items(), key=lambda kv: (kv[1], kv[0]))


def _reuse(db: Session, case: PathwayCase, *, by: User | None, call_id: int | None, ecg_request_id: int | None,
           hospital_organisation_id: int | None, diagnosis: str, diagnosis_code: str, arrival_mode: str | None,
           bypass_ed: bool | None, nodes: Mapping[str, datetime], source: str,
           client_address: str) -> PathwayCase:
    filled: dict[str, Any] = {}
    for name, value in (("call_id", call_id), ("ecg_request_id", ecg_request_id),
                        ("hospital_organisation_id", hospital_organisation_id), ("bypass_ed", bypass_ed)):
        if value is not None and getattr(case, name) is None:
            setattr(case, name, value)
            filled[name] = value
    for name, value in (("diagnosis", diagnosis), ("diagnosis_code", diagnosis_code),
                        ("arrival_mode", arrival_mode or "")):
        if value and not getattr(case, name):
            setattr(case, name, value)
            filled[name] = value
    present = set(nodes_of(db, case))
    new_nodes = [(n, at) for n, at in _in_time_order(nodes) if n not in present]
    case.updated_at = utcnow()
    _event(db, case, kind="reuse", by=by, detail={"source": source, "filled": filled,
                                                  "nodes": [n for n, _ in new_nodes]})
    audit.record(db, actor=_actor(by, client_address), action="pathway.reuse", patient_id=case.patient_id,
                 resource=f"pathway:{case.id}", detail={"filled": sorted(filled), "source": source})
    db.flush()
    node_source = source if source in NODE_SOURCES else "manual"
    for node, at in new_nodes:
        _record(db, case, node=node, at=at, by=by, source=node_source, client_address=client_address)
    publish(db, case, action="reuse")
    return case


# --- recording nodes ------------------------------------------------------------------------------

def _names(defs: Iterable[NodeDefinition]) -> dict[str, NodeDefinition]:
    return {d.code: d for d in defs}


def check_order(db: Session, case: PathwayCase, *, node: str, at: datetime,
                recorded: Mapping[str, datetime]) -> None:
    """Refuse a time that breaks the centre's partial order against the nodes already recorded."""
    pairs = order_pairs(db, case.centre)
    defs = _names(node_definitions(db, case.centre))
    here = defs[node]
    for other, other_at in sorted(recorded.items(), key=lambda kv: (kv[1], kv[0])):
        if other == node or other not in defs:
            continue
        there = defs[other]
        if (other, node) in pairs and at < other_at:
            raise Conflict(
                f"{here.zh} {_hhmm(at, other_at)} 早于{there.zh} {_hhmm(other_at, at)} / {here.en} "
                f"{_hhmm(at, other_at)} is before {there.en} {_hhmm(other_at, at)}", code="node_out_of_order",
                field_errors=[field_error("at", f"{node} must not be before {other}")])
        if (node, other) in pairs and at > other_at:
            raise Conflict(
                f"{here.zh} {_hhmm(at, other_at)} 晚于{there.zh} {_hhmm(other_at, at)} / {here.en} "
                f"{_hhmm(at, other_at)} is after {there.en} {_hhmm(other_at, at)}", code="node_out_of_order",
                field_errors=[field_error("at", f"{node} must not be after {other}")])


def record_node(db: Session, *, case_id: int, node: str, at: datetime, by: User | None, note: str = "",
                source: str = "manual", reason: str = "", client_address: str = "") -> PathwayNode:
    """Record when a node happened. Refuses, naming the problem: an unknown node for the centre, a time more
    than 2 minutes ahead, a time out of order with the nodes already there, re-recording without a reason,
    a closed case. A correction with a reason replaces the time and keeps the old one in the event log."""
    case = load(db, case_id)
    if by is not None:
        require_recorder(db, user=by, case=case, client_address=client_address)
    row = _record(db, case, node=node, at=at, by=by, note=note, source=source, reason=reason,
                  client_address=client_address)
    publish(db, case, action="node", node=node)
    return row


def _record(db: Session, case: PathwayCase, *, node: str, at: datetime, by: User | None, note: str = "",
            source: str = "manual", reason: str = "", client_address: str = "") -> PathwayNode:
    if case.state != CaseState.OPEN:
        raise Conflict(f"病例 {case.number} 已{'结束' if case.state == CaseState.CLOSED else '撤销'}，不能再记录 / "
                       f"case {case.number} is {case.state}; nothing more can be recorded", code="case_closed")
    defs = _names(node_definitions(db, case.centre))
    if node not in defs:
        raise InvalidInput(
            f"{CENTRE_ZH[Centre(case.centre)]}没有“{node}”这个节点 / the {CENTRE_EN[Centre(case.centre)]} has no "
            f"node {node!r} (known: {', '.join(defs)})", field_errors=[field_error("node", f"unknown node {node}")])
    if at.tzinfo is None:
        raise InvalidInput("时间须带时区 / the time needs a time zone", field_errors=[field_error("at", "naive")])
    if not EARLIEST_YEAR <= at.year <= utcnow().year + 1:
        raise InvalidInput(f"{defs[node].zh}时间 {at.year} 年不合理，请核对 / {defs[node].en} in the year {at.year}: "
                           "check the date", field_errors=[field_error("at", "implausible year")])
    now = utcnow()
    if at > now + FUTURE_SLACK:
        raise InvalidInput(f"{defs[node].zh}时间 {_hhmm(at, now)} 在未来 / {defs[node].en} time {_hhmm(at, now)} is "
                           "in the future", field_errors=[field_error("at", "in the future")])
    if source not in NODE_SOURCES:
        raise InvalidInput(f"未知的记录来源“{source}” / unknown source", field_errors=[field_error("source", source)])
    current = nodes_of(db, case)
    existing = current.get(node)
    reason = reason.strip()
    if existing is not None and not reason:
        raise Conflict(f"{defs[node].zh}已记录为 {_hhmm(existing.at)}；更正须说明理由 / {defs[node].en} is already "
                       f"recorded at {_hhmm(existing.at)}; a correction needs a reason", code="node_recorded",
                       field_errors=[field_error("reason", "a correction needs a reason")])
    if existing is not None and existing.at == at:
        return existing
    check_order(db, case, node=node, at=at, recorded={k: v.at for k, v in current.items()})
    if existing is None:
        row = PathwayNode(case_id=case.id, node=node, at=at, recorded_at=now, by_user_id=by.id if by else None,
                          source=source, note=note.strip())
        try:
            with db.begin_nested():
                db.add(row)
                db.flush()
        except IntegrityError:
            raise Conflict(f"{defs[node].zh}刚被他人记录 / someone else just recorded {defs[node].en}",
                           code="node_recorded") from None
        _event(db, case, kind="node", node=node, new_at=at, by=by, detail={"source": source})
    else:
        row = existing
        old_at = row.at
        row.at, row.recorded_at, row.by_user_id = at, now, by.id if by else None
        row.source, row.note = source, note.strip() or row.note
        _event(db, case, kind="correct", node=node, old_at=old_at, new_at=at, by=by, reason=reason,
               detail={"source": source})
    case.updated_at = now
    audit.record(db, actor=_actor(by, client_address), action="pathway.node" if existing is None else
                 "pathway.correct", patient_id=case.patient_id, resource=f"pathway:{case.id}",
                 detail={"node": node, "at": at.isoformat(), **({"reason": reason} if existing else {})})
    db.flush()
    return row


# --- links and closing ----------------------------------------------------------------------------

def link(db: Session, *, case_id: int, call_id: int | None = None, ecg_request_id: int | None = None,
         hospital_organisation_id: int | None = None, arrival_mode: str | None = None,
         bypass_ed: bool | None = None, by: User | None = None, client_address: str = "") -> PathwayCase:
    """Tie the case to its call, its ECG request, the receiving hospital; say how the patient arrived."""
    case = load(db, case_id)
    if by is not None:
        require_recorder(db, user=by, case=case, client_address=client_address)
    if case.state == CaseState.CANCELLED:
        raise Conflict(f"病例 {case.number} 已撤销 / case {case.number} is cancelled", code="case_closed")
    errors: list[dict[str, Any]] = []
    _check_links(db, call_id=call_id, ecg_request_id=ecg_request_id,
                 hospital_organisation_id=hospital_organisation_id, arrival_mode=arrival_mode, errors=errors)
    if errors:
        raise InvalidInput("关联信息有误 / the links have errors: " + "; ".join(e["message"] for e in errors),
                           field_errors=errors)
    changes: dict[str, Any] = {}
    for name, value in (("call_id", call_id), ("ecg_request_id", ecg_request_id),
                        ("hospital_organisation_id", hospital_organisation_id), ("arrival_mode", arrival_mode),
                        ("bypass_ed", bypass_ed)):
        if value is not None and getattr(case, name) != value:
            changes[name] = {"old": getattr(case, name), "new": value}
            setattr(case, name, value)
    if not changes:
        return case
    case.updated_at = utcnow()
    _event(db, case, kind="link", by=by, detail=changes)
    audit.record(db, actor=_actor(by, client_address), action="pathway.link", patient_id=case.patient_id,
                 resource=f"pathway:{case.id}", detail={k: v["new"] for k, v in changes.items()})
    db.flush()
    publish(db, case, action="link")
    return case


def close(db: Session, *, case_id: int, by: User | None, outcome: str, client_address: str = "") -> PathwayCase:
    """End the pathway with its outcome (discharged, transferred, died ...); the timeline stays as recorded."""
    case = load(db, case_id)
    if by is not None:
        require_recorder(db, user=by, case=case, client_address=client_address)
    outcome = (outcome or "").strip()
    if not outcome:
        raise InvalidInput("请填写转归 / state the outcome", field_errors=[field_error("outcome", "required")])
    if case.state != CaseState.OPEN:
        raise Conflict(f"病例 {case.number} 已经结束 / case {case.number} is already {case.state}",
                       code="case_closed")
    now = utcnow()
    case.state, case.outcome, case.closed_at = CaseState.CLOSED, outcome[:2000], now
    case.closed_by_user_id, case.updated_at = (by.id if by else None), now
    _event(db, case, kind="close", by=by, reason=outcome[:2000])
    audit.record(db, actor=_actor(by, client_address), action="pathway.close", patient_id=case.patient_id,
                 resource=f"pathway:{case.id}")
    db.flush()
    publish(db, case, action="close")
    return case


def cancel(db: Session, *, case_id: int, by: User | None, reason: str, client_address: str = "") -> PathwayCase:
    """Opened by mistake (not a STEMI after all, a duplicate): off the board and out of the metrics."""
    case = load(db, case_id)
    if by is not None:
        require_recorder(db, user=by, case=case, client_address=client_address)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("请说明撤销理由 / say why", field_errors=[field_error("reason", "required")])
    if case.state != CaseState.OPEN:
        raise Conflict(f"病例 {case.number} 已经结束 / case {case.number} is already {case.state}",
                       code="case_closed")
    now = utcnow()
    case.state, case.closed_at, case.closed_by_user_id, case.updated_at = (CaseState.CANCELLED, now,
                                                                           by.id if by else None, now)
    _event(db, case, kind="cancel", by=by, reason=reason[:2000])
    audit.record(db, actor=_actor(by, client_address), action="pathway.cancel", patient_id=case.patient_id,
                 resource=f"pathway:{case.id}", detail={"reason": reason[:200]})
    db.flush()
    publish(db, case, action="cancel")
    return case


# --- reads for the pages --------------------------------------------------------------------------

def cases_for_call(db: Session, call_id: int) -> list[PathwayCase]:
    return list(db.execute(select(PathwayCase).where(PathwayCase.call_id == call_id)
                           .order_by(PathwayCase.id)).scalars())


def open_cases(db: Session, *, centre: Centre, user: User, limit: int = 100,
               client_address: str = "") -> list[PathwayCase]:
    """A centre's open cases that concern the user's organisation (all of them for the alliance admin), oldest
    first, read off the partial index ix_pathway_open_centre; audited since cards name (masked) patients."""
    if user.role not in VIEWER_ROLES and user.role != Role.ALLIANCE_ADMIN:
        raise AccessDenied("急救看板仅供医务人员与调度员使用 / the boards are for clinical staff and dispatchers")
    q = select(PathwayCase).where(PathwayCase.state == CaseState.OPEN, PathwayCase.centre == centre)
    if user.role != Role.ALLIANCE_ADMIN:
        org = user.organisation_id
        q = q.where((PathwayCase.hospital_organisation_id == org) | (PathwayCase.opened_organisation_id == org))
    rows = list(db.execute(q.order_by(PathwayCase.opened_at, PathwayCase.id).limit(limit)).scalars())
    audit.record(db, actor=_actor(user, client_address), action="pathway.board",
                 detail={"centre": str(centre), "count": len(rows), "case_ids": [r.id for r in rows][:100]})
    return rows


@dataclass
class Interval:
    """A metric interval of one case, e.g. D2B 72 min against ≤ 90."""

    target: MetricTarget
    minutes: float | None
    on_target: bool | None
    running: bool = False  # the start is recorded, the end not yet: minutes so far


def compares(minutes: float, target: MetricTarget) -> bool:
    limit = float(target.target_minutes or 0)
    return minutes < limit if target.comparison == "lt" else minutes <= limit


def intervals(db: Session, case: PathwayCase, nodes: Mapping[str, PathwayNode] | None = None,
              now: datetime | None = None, targets: list[MetricTarget] | None = None) -> list[Interval]:
    """The case's interval metrics against their targets; a running interval counts up to now."""
    nodes = nodes if nodes is not None else nodes_of(db, case)
    out: list[Interval] = []
    for target in targets if targets is not None else metric_targets(db, case.centre):
        if target.kind != "interval" or target.from_node not in nodes:
            continue
        start = nodes[target.from_node].at
        end_node = nodes.get(target.to_node)
        if end_node is not None:
            minutes = (end_node.at - start).total_seconds() / 60
            out.append(Interval(target=target, minutes=minutes, on_target=compares(minutes, target)))
        elif case.state == CaseState.OPEN:
            minutes = ((now or utcnow()) - start).total_seconds() / 60
            out.append(Interval(target=target, minutes=minutes, on_target=None, running=True))
    return out


# Often unknown or never happening: never wait for these before expecting what follows.
_OPTIONAL = frozenset({"onset", "injury"})
# Either reperfusion or the other: once one is under way, the other is not expected.
_ALTERNATIVES = {"thrombolysis": frozenset({"cath_lab_activation", "cath_lab_arrival", "wire_crossing"}),
                 "cath_lab_activation": frozenset({"thrombolysis"}), "cath_lab_arrival": frozenset({"thrombolysis"}),
                 "wire_crossing": frozenset({"thrombolysis"}),
                 # Transmission is a pre-hospital step: once the patient is at the door it is no longer awaited.
                 "ecg_transmitted": frozenset({"arrival"})}


def superseded(code: str, nodes: Mapping[str, Any]) -> bool:
    """Not awaited any more: the other reperfusion is under way, or the patient is past the door."""
    return bool(_ALTERNATIVES.get(code, frozenset()) & set(nodes))


def next_nodes(db: Session, case: PathwayCase, nodes: Mapping[str, PathwayNode] | None = None,
               limit: int = 3, defs: list[NodeDefinition] | None = None,
               pairs: frozenset[tuple[str, str]] | None = None) -> list[str]:
    """What to expect next: unrecorded nodes whose predecessors (bar onset/injury) are all recorded or passed,
    in display order. Onset and injury are only expected on an empty timeline.

    A node is passed when a node it must precede is already recorded: a STEMI found on a village ECG has no
    ambulance first contact before its first ECG, and the gap must not hold back the cath-lab steps. A passed
    node can still be entered with its time through the full form."""
    nodes = nodes if nodes is not None else nodes_of(db, case)
    pairs = pairs if pairs is not None else order_pairs(db, case.centre)
    passed = {before for before, after in pairs if after in nodes and before not in nodes}
    out = []
    for d in defs if defs is not None else node_definitions(db, case.centre):
        if d.code in nodes or d.code in passed or (d.code in _OPTIONAL and nodes) or superseded(d.code, nodes):
            continue
        if all(before in nodes or before in _OPTIONAL or before in passed
               for before, after in pairs if after == d.code):
            out.append(d.code)
    return out[:limit]


@dataclass
class CaseView:
    case: PathwayCase
    nodes: dict[str, PathwayNode]
    patient_label: str = ""
    hospital_name: str = ""
    call: Any | None = None
    intervals: list[Interval] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)


def describe(db: Session, cases: list[PathwayCase], *, now: datetime | None = None) -> dict[int, CaseView]:
    """What a board card or the case page shows: nodes, masked patient, hospital, call, intervals."""
    from healthrelay.patients.models import Patient
    from healthrelay.teleconsult.service import mask_name

    ids = [c.id for c in cases]
    by_case: dict[int, dict[str, PathwayNode]] = {i: {} for i in ids}
    for start in range(0, len(ids), 900):
        for n in db.execute(select(PathwayNode).where(PathwayNode.case_id.in_(ids[start:start + 900]))
                            .order_by(PathwayNode.at, PathwayNode.id)).scalars():
            by_case[n.case_id][n.node] = n
    pids = sorted({c.patient_id for c in cases if c.patient_id is not None})
    names = dict(db.execute(select(Patient.id, Patient.name).where(Patient.id.in_(pids))).all()) if pids else {}
    oids = sorted({c.hospital_organisation_id for c in cases if c.hospital_organisation_id is not None})
    orgs = dict(db.execute(select(Organisation.id, Organisation.name).where(Organisation.id.in_(oids))).all()) \
        if oids else {}
    # The rules of each centre once, not once per case.
    centres = {str(c.centre) for c in cases}
    targets = {centre: metric_targets(db, centre) for centre in centres}
    defs = {centre: node_definitions(db, centre) for centre in centres}
    pairs = {centre: order_pairs(db, centre) for centre in centres}
    out: dict[int, CaseView] = {}
    for c in cases:
        nodes = by_case[c.id]
        out[c.id] = CaseView(
            case=c, nodes=nodes, patient_label=mask_name(names.get(c.patient_id or 0, "")) if c.patient_id else "",
            hospital_name=orgs.get(c.hospital_organisation_id or 0, ""),
            call=_emergency_call(db, c.call_id) if c.call_id is not None else None,
            intervals=intervals(db, c, nodes, now, targets[str(c.centre)]),
            expected=next_nodes(db, c, nodes, defs=defs[str(c.centre)], pairs=pairs[str(c.centre)]))
    return out


# --- care relationship ----------------------------------------------------------------------------

def is_party_to_case_of(db: Session, user: User, patient_id: int) -> bool:
    """Staff of the receiving hospital or the opening organisation, while the case is open and 30 days after."""
    if user.organisation_id is None:
        return False
    since = utcnow() - timedelta(days=CARE_RELATIONSHIP_DAYS_AFTER)
    org = user.organisation_id
    return bool(db.execute(select(exists().where(
        PathwayCase.patient_id == patient_id,
        (PathwayCase.hospital_organisation_id == org) | (PathwayCase.opened_organisation_id == org),
        PathwayCase.closed_at.is_(None) | (PathwayCase.closed_at >= since)))).scalar())
