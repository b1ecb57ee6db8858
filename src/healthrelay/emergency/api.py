"""JSON API of the emergency alliance (mounted under /api/v1). Thin: every rule lives in service.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, status

from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.emergency import dispatch as ranking
from healthrelay.emergency import metrics, service
from healthrelay.emergency.schemas import (
    AmbulanceOut,
    AmbulanceStateIn,
    AreaOut,
    CallCreate,
    CallDetail,
    CallOut,
    DispatchIn,
    ReasonIn,
    StateChangeOut,
)

router = APIRouter(tags=["emergency"])


def _amb_out(amb: Any) -> AmbulanceOut:
    return AmbulanceOut.model_validate(amb).model_copy(
        update={"next_states": [str(s) for s in service.allowed_next_states(amb)]})


@router.post("/emergency/calls", response_model=CallDetail, status_code=status.HTTP_201_CREATED)
def create_call(body: CallCreate, request: Request, db: DbSession, user: CurrentUser) -> CallDetail:
    """Take down a 120 call (answered now unless `answered_at` is given)."""
    call = service.create_call(db, by=user, data=service.CallInput(**body.model_dump()),
                               client_address=client_address(request))
    return CallDetail.model_validate(call)


@router.get("/emergency/calls", response_model=list[CallOut])
def open_calls(db: DbSession, user: CurrentUser) -> list[CallOut]:
    """The dispatch board's open calls, most urgent and longest waiting first."""
    service.require_board(db, user)
    return [CallOut.model_validate(c) for c in service.open_calls(db)]


@router.get("/emergency/calls/{call_id}", response_model=CallDetail)
def get_call(call_id: int, request: Request, db: DbSession, user: CurrentUser) -> CallDetail:
    return CallDetail.model_validate(service.get_call_for(db, user=user, call_id=call_id,
                                                         client_address=client_address(request)))


@router.get("/emergency/calls/{call_id}/recommendation")
def recommendation(call_id: int, db: DbSession, user: CurrentUser) -> dict[str, Any]:
    """The ranked ambulances with minutes and the destination with its reasons."""
    service.require_board(db, user)
    return ranking.recommend(db, call_id=call_id).to_dict()


@router.post("/emergency/calls/{call_id}/dispatch", response_model=CallDetail)
def dispatch(call_id: int, body: DispatchIn, request: Request, db: DbSession, user: CurrentUser) -> CallDetail:
    call = service.dispatch(db, call_id=call_id, ambulance_id=body.ambulance_id,
                            destination_organisation_id=body.destination_organisation_id, by=user,
                            client_address=client_address(request))
    return CallDetail.model_validate(call)


@router.post("/emergency/calls/{call_id}/cancel", response_model=CallDetail)
def cancel(call_id: int, body: ReasonIn, request: Request, db: DbSession, user: CurrentUser) -> CallDetail:
    call = service.cancel_call(db, call_id=call_id, by=user, reason=body.reason,
                               client_address=client_address(request))
    return CallDetail.model_validate(call)


@router.get("/emergency/ambulances", response_model=list[AmbulanceOut])
def ambulances(db: DbSession, user: CurrentUser) -> list[AmbulanceOut]:
    service.require_board(db, user)
    return [_amb_out(a) for a in service.ambulances(db)]


@router.post("/emergency/ambulances/{ambulance_id}/state", response_model=AmbulanceOut)
def change_state(ambulance_id: int, body: AmbulanceStateIn, request: Request, db: DbSession,
                 user: CurrentUser) -> AmbulanceOut:
    """The crew's next state, with the phone's position when it has one."""
    amb = service.change_ambulance_state(db, ambulance_id=ambulance_id, to_state=body.to_state, by=user,
                                         latitude=body.latitude, longitude=body.longitude, reason=body.reason,
                                         expected_state=body.expected_state, client_address=client_address(request))
    return _amb_out(amb)


@router.get("/emergency/ambulances/{ambulance_id}/log", response_model=list[StateChangeOut])
def ambulance_log(ambulance_id: int, db: DbSession, user: CurrentUser) -> list[StateChangeOut]:
    service.require_board(db, user)
    service.get_ambulance(db, ambulance_id)
    return [StateChangeOut.model_validate(r) for r in service.ambulance_log(db, ambulance_id=ambulance_id)]


@router.get("/emergency/areas", response_model=list[AreaOut])
def areas(db: DbSession, user: CurrentUser, q: str = "") -> list[AreaOut]:
    """The intake's village/town picker: Chinese name, full pinyin or initials."""
    service.require_board(db, user)
    return [AreaOut(id=a.id, name=a.name, level=str(a.level), parent_name=p.name if p else "", latitude=a.latitude,
                    longitude=a.longitude, urban=urban) for a, p, urban in service.search_areas(db, q=q)]


@router.get("/emergency/metrics")
def response_metrics(db: DbSession, user: CurrentUser, since: datetime | None = None, until: datetime | None = None,
                     station_id: int | None = None) -> list[dict[str, Any]]:
    """1030 and the national answer/departure shares per station, month and area."""
    service.require_metrics(db, user)
    return [{"station_id": r.station_id, "station_name": r.station_name, "month": r.month,
             "area": "urban" if r.urban else "rural", "calls": r.calls,
             **{name: {"met": s.met, "counted": s.counted, "share": s.share}
                for name, s in (("answer", r.answer), ("depart", r.depart), ("on_scene", r.on_scene))}}
            for r in metrics.response_metrics(db, since=since, until=until, station_id=station_id)]
