"""Time-critical pathway (五大中心) tables: a case per patient and centre, its timestamped nodes, and the rules
as data — which nodes a centre records, the order they must respect, and the national metric targets.

A timeline is a list of timestamped nodes (domain.md): one row per node per case. A correction replaces the
time only with a reason, and the old time stays in `pathway_events`, so every change says who, when and why.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from healthrelay.core.db import Base, UTCDateTime, utcnow
from healthrelay.directory.models import _enum


class Centre(enum.StrEnum):
    CHEST_PAIN = "chest_pain"  # 胸痛中心
    STROKE = "stroke"  # 卒中中心
    TRAUMA = "trauma"  # 创伤中心
    MATERNAL = "maternal"  # 危重孕产妇救治中心
    NEONATAL = "neonatal"  # 危重新生儿救治中心


class CaseState(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    CANCELLED = "cancelled"


class PathwayCase(Base):
    """One patient on one centre's pathway; the patient may be unknown at first (an unidentified casualty)."""

    __tablename__ = "pathway_cases"
    __table_args__ = (
        # The live boards: a centre's open cases, oldest first (partial: closed cases never sit on a board).
        Index("ix_pathway_open_centre", "centre", "opened_at",
              postgresql_where=text("state = 'open'"), sqlite_where=text("state = 'open'")),
        # Metrics by centre and month.
        Index("ix_pathway_centre_opened", "centre", "opened_at"),
        # open_case's idempotence look-up: the same patient's recent case at the same centre.
        Index("ix_pathway_patient_centre", "patient_id", "centre", "opened_at"),
        Index("ix_pathway_hospital_opened", "hospital_organisation_id", "opened_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(40), unique=True)  # XT20261204-0003
    centre: Mapped[Centre] = mapped_column(_enum(Centre))
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    state: Mapped[CaseState] = mapped_column(_enum(CaseState), default=CaseState.OPEN)
    source: Mapped[str] = mapped_column(String(20), default="manual")  # ecg, call, walk_in, manual
    # The receiving hospital (where the door, the CT and the cath lab are).
    hospital_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"))
    # Who opened it: a village clinic's ECG, the 120 centre, the hospital's own ED.
    opened_organisation_id: Mapped[int | None] = mapped_column(ForeignKey("organisations.id"), index=True)
    ecg_request_id: Mapped[int | None] = mapped_column(ForeignKey("consult_requests.id"), index=True)
    # The 120 call that brought the patient (the emergency domain's table comes one migration earlier).
    call_id: Mapped[int | None] = mapped_column(ForeignKey("emergency_calls.id"), index=True)
    arrival_mode: Mapped[str] = mapped_column(String(20), default="")  # ambulance, self, transfer, ""
    # The ambulance took the patient past the emergency department (and CCU) straight to the cath lab.
    bypass_ed: Mapped[bool | None] = mapped_column(default=None)
    diagnosis: Mapped[str] = mapped_column(Text, default="")
    # A short code the metrics select on: stemi, nstemi, ua, ischaemic_stroke, haemorrhagic_stroke, other, "".
    diagnosis_code: Mapped[str] = mapped_column(String(30), default="")
    outcome: Mapped[str] = mapped_column(Text, default="")
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    opened_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PathwayNode(Base):
    """A timestamped node of a case's timeline: when it happened (`at`), when and by whom it was recorded."""

    __tablename__ = "pathway_nodes"
    __table_args__ = (UniqueConstraint("case_id", "node"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("pathway_cases.id", ondelete="CASCADE"))
    node: Mapped[str] = mapped_column(String(40))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    source: Mapped[str] = mapped_column(String(20), default="manual")  # manual, ecg, call, device, import
    note: Mapped[str] = mapped_column(Text, default="")


class PathwayEvent(Base):
    """Every change of a case: opened, node recorded, node corrected (old and new time), linked, closed."""

    __tablename__ = "pathway_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("pathway_cases.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # open, reuse, node, correct, link, close, cancel
    node: Mapped[str] = mapped_column(String(40), default="")
    old_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    new_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class NodeDefinition(Base):
    """The nodes a centre records, in display order (data, seeded by migration 0012)."""

    __tablename__ = "pathway_node_definitions"

    centre: Mapped[str] = mapped_column(String(20), primary_key=True)
    code: Mapped[str] = mapped_column(String(40), primary_key=True)
    zh: Mapped[str] = mapped_column(String(60))
    en: Mapped[str] = mapped_column(String(80))
    position: Mapped[int] = mapped_column(Integer)


class NodeOrder(Base):
    """`before` may not happen after `after` in one case (a partial order; checked transitively)."""

    __tablename__ = "pathway_node_orders"
    __table_args__ = (UniqueConstraint("centre", "before", "after"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    centre: Mapped[str] = mapped_column(String(20))
    before: Mapped[str] = mapped_column(String(40))
    after: Mapped[str] = mapped_column(String(40))


class MetricTarget(Base):
    """A national metric and its target (data, seeded).

    kind "interval": minutes from `from_node` to `to_node` per case; a case is on target when the minutes
    compare (`lt` <, `le` ≤) to `target_minutes`; the month meets the target when the mean does, and, with a
    `required_share`, when at least that share of cases is on target (D2B ≤ 90 min in ≥ 75%).
    kind "share": the share of the `population` (e.g. ambulance STEMI patients) with `share_flag` set (bypass
    ED, pre-hospital ECG transmitted) must reach `required_share`.
    """

    __tablename__ = "pathway_metric_targets"
    __table_args__ = (UniqueConstraint("centre", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    centre: Mapped[str] = mapped_column(String(20))
    code: Mapped[str] = mapped_column(String(40))
    zh: Mapped[str] = mapped_column(String(80))
    en: Mapped[str] = mapped_column(String(120))
    kind: Mapped[str] = mapped_column(String(20), default="interval")
    from_node: Mapped[str] = mapped_column(String(40), default="")
    to_node: Mapped[str] = mapped_column(String(40), default="")
    target_minutes: Mapped[float | None] = mapped_column(Float)
    comparison: Mapped[str] = mapped_column(String(4), default="lt")
    required_share: Mapped[float | None] = mapped_column(Float)
    population: Mapped[str] = mapped_column(String(30), default="")
    share_flag: Mapped[str] = mapped_column(String(30), default="")
    position: Mapped[int] = mapped_column(Integer, default=100)
    is_active: Mapped[bool] = mapped_column(default=True)
