"""JSON API of the HL7 interface (mounted under /api/v1): the senders registry, received messages and dead
letters with replay and discard. Thin: every rule lives in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from healthrelay.core.deps import CurrentUser, DbSession, client_address
from healthrelay.hl7 import service
from healthrelay.hl7.schemas import DeadLetterDetail, DeadLetterOut, DiscardIn, MessageOut, SenderIn, SenderOut

router = APIRouter(prefix="/hl7", tags=["hl7"])


@router.get("/senders", response_model=list[SenderOut])
def senders(db: DbSession, user: CurrentUser) -> list[SenderOut]:
    """Registered sending systems: an org admin sees their organisation's, the alliance admin all."""
    return [SenderOut.model_validate(s) for s in service.list_senders(db, admin=user)]


@router.post("/senders", response_model=SenderOut, status_code=status.HTTP_201_CREATED)
def add_sender(body: SenderIn, request: Request, db: DbSession, user: CurrentUser) -> SenderOut:
    sender = service.register_sender(db, by=user, client_address=client_address(request), **body.model_dump())
    return SenderOut.model_validate(sender)


@router.post("/senders/{sender_id}/disable", response_model=SenderOut)
def disable_sender(sender_id: int, request: Request, db: DbSession, user: CurrentUser) -> SenderOut:
    return SenderOut.model_validate(service.set_sender_active(db, sender_id=sender_id, active=False, by=user,
                                                              client_address=client_address(request)))


@router.post("/senders/{sender_id}/enable", response_model=SenderOut)
def enable_sender(sender_id: int, request: Request, db: DbSession, user: CurrentUser) -> SenderOut:
    return SenderOut.model_validate(service.set_sender_active(db, sender_id=sender_id, active=True, by=user,
                                                              client_address=client_address(request)))


@router.get("/messages", response_model=list[MessageOut])
def messages(db: DbSession, user: CurrentUser, before: Annotated[int | None, Query(ge=1)] = None,
             limit: Annotated[int, Query(ge=1, le=500)] = 50,
             message_type: Annotated[str, Query(max_length=20)] = "") -> list[MessageOut]:
    rows = service.list_messages(db, admin=user, limit=limit, before_id=before, message_type=message_type)
    return [MessageOut.model_validate(m).model_copy(update={"facility": s.facility}) for m, s in rows]


@router.get("/dead-letters", response_model=list[DeadLetterOut])
def dead_letters(db: DbSession, user: CurrentUser, state: Annotated[str, Query(max_length=12)] = "open",
                 before: Annotated[int | None, Query(ge=1)] = None,
                 limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[DeadLetterOut]:
    rows = service.list_dead_letters(db, admin=user, state=state, limit=limit, before_id=before)
    return [DeadLetterOut.model_validate(r) for r in rows]


@router.get("/dead-letters/{dead_letter_id}", response_model=DeadLetterDetail)
def dead_letter(dead_letter_id: int, db: DbSession, user: CurrentUser) -> DeadLetterDetail:
    row = service.get_dead_letter(db, dead_letter_id=dead_letter_id, admin=user)
    return DeadLetterDetail.model_validate(row).model_copy(update={"text": service.decoded_text(row)})


@router.post("/dead-letters/{dead_letter_id}/replay", response_model=MessageOut)
def replay(dead_letter_id: int, request: Request, db: DbSession, user: CurrentUser) -> MessageOut:
    """Run the stored payload through the inbound path again; 422 with the reason when it is refused again."""
    message = service.replay(db, dead_letter_id=dead_letter_id, by=user, client_address=client_address(request))
    return MessageOut.model_validate(message)


@router.post("/dead-letters/{dead_letter_id}/discard", response_model=DeadLetterOut)
def discard(dead_letter_id: int, body: DiscardIn, request: Request, db: DbSession, user: CurrentUser) -> DeadLetterOut:
    row = service.discard(db, dead_letter_id=dead_letter_id, by=user, note=body.note,
                          client_address=client_address(request))
    return DeadLetterOut.model_validate(row)
