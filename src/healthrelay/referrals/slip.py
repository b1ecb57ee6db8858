"""The printable referral slip (转诊单): one A4 page as PDF, with the Chinese fonts embedded.

Paper still travels with the patient (to the county registration desk, back to the village), so the
slip carries what the receiver needs without a login, and a receipt strip (回执) the receiving
hospital fills in and returns. The resident ID is masked on paper whoever prints it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session
from weasyprint import HTML

from healthrelay.access.service import resolve_patient
from healthrelay.accounts.models import User
from healthrelay.directory import service as directory
from healthrelay.patients import service as patients
from healthrelay.patients.identity import mask_resident_id
from healthrelay.referrals import display
from healthrelay.referrals.models import Referral
from healthrelay.web.i18n import translate
from healthrelay.web.templating import templates

# The slip is a Chinese document wherever it is printed.
SLIP_LOCALE = "zh"


def _alliance_name(db: Session, referral: Referral) -> str:
    """The alliance both ends belong to (the one the referral travels in)."""
    orgs = [referral.from_organisation_id, referral.to_organisation_id]
    found = directory.memberships_of(db, orgs)
    shared = {m.alliance_id for m in found[orgs[0]]} & {m.alliance_id for m in found[orgs[1]]}
    names = [m.alliance.name for m in found[orgs[0]] if m.alliance_id in shared]
    return names[0] if names else ""


def slip_context(db: Session, *, referral: Referral, user: User) -> dict[str, Any]:
    """What the slip shows; call after the service has checked (and audited) the user's access."""
    patient = resolve_patient(db, referral.patient_id)
    record = patients.view(db, user=user, patient=patient)
    names = display.Names.load(db, [referral], user_ids=[user.id])
    plan = referral.care_plan or {}
    return {
        "r": referral, "names": names, "alliance": _alliance_name(db, referral),
        "patient": {"name": record.name, "sex": record.sex, "age": display.age_on(record.birth_date),
                    "masked_id": mask_resident_id(record.resident_id) if record.resident_id else ""},
        "vitals": display.vital_rows(referral.vital_signs),
        "medicines": [display.medicine_text(m) for m in referral.medicines],
        "plan": plan, "plan_medicines": [display.medicine_text(m) for m in plan.get("medicines", [])],
        "printed_at": datetime.now(tz=display.LOCAL_TZ), "printed_by": names.user(user.id),
    }


def render_html(db: Session, *, referral: Referral, user: User) -> str:
    def t(key: str, **params: object) -> str:
        return translate(key, SLIP_LOCALE, **params)

    return templates.env.get_template("referrals/slip.html").render(t=t, **slip_context(db, referral=referral,
                                                                                         user=user))


def render_pdf(db: Session, *, referral: Referral, user: User) -> bytes:
    """A4 PDF; the fonts are named in the slip's CSS so WeasyPrint embeds (a subset of) Noto CJK."""
    return HTML(string=render_html(db, referral=referral, user=user)).write_pdf()
