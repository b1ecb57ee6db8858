"""What follows a pathway change outside its own tables.

Live events (`pathway.changed`) leave through the notifications bus after commit (service.publish). Here:
being party to a case is a care relationship, so the receiving hospital's team can open the record of the
patient the ambulance is bringing in (need-to-know, access/service.py).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from healthrelay.access import service as access
from healthrelay.accounts.models import User
from healthrelay.pathways import service


@access.care_relationship_check
def _party_to_pathway_case(db: Session, user: User, patient_id: int) -> str | None:
    """Staff of the receiving hospital and of the opening organisation, while open and 30 days after."""
    return "pathway_case" if service.is_party_to_case_of(db, user, patient_id) else None
