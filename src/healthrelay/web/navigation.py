"""Navigation by role: each entry is (message id, path, roles that see it)."""

from __future__ import annotations

from typing import Any

from healthrelay.accounts.models import Role

ALL_STAFF = frozenset(r for r in Role if r != Role.PATIENT)
CLINICAL = frozenset({Role.CLINICIAN, Role.REMOTE_READER, Role.DISPATCHER, Role.PHARMACIST,
                      Role.ORG_ADMIN, Role.ALLIANCE_ADMIN})
ADMINS = frozenset({Role.ALLIANCE_ADMIN, Role.ORG_ADMIN})
REPORTING = ADMINS | {Role.HEALTH_BUREAU}
READERS = frozenset({Role.REMOTE_READER, Role.ORG_ADMIN})
DISPATCH = frozenset({Role.DISPATCHER, Role.ORG_ADMIN, Role.ALLIANCE_ADMIN})

MENU: list[tuple[str, str, frozenset[Role]]] = [
    ("nav.home", "/", frozenset(Role)),
    ("nav.inbox", "/inbox", frozenset(Role)),
    ("nav.referrals", "/referrals", CLINICAL),
    ("nav.follow_ups", "/referrals/follow-ups", CLINICAL),
    ("nav.referral_kpi", "/referrals/kpi", REPORTING),
    ("nav.reading_worklist", "/teleconsult/worklist", READERS),
    ("nav.teleconsult", "/teleconsult", CLINICAL),
    ("nav.critical_results", "/teleconsult/critical", CLINICAL | REPORTING),
    ("nav.imaging", "/imaging", CLINICAL),
    ("nav.ecg_upload", "/ecg/upload", CLINICAL),
    ("nav.results_entry", "/results/lab/new", frozenset({Role.CLINICIAN, Role.ORG_ADMIN})),
    ("nav.emergency", "/emergency", DISPATCH),
    ("nav.emergency_metrics", "/emergency/metrics", DISPATCH | REPORTING),
    ("nav.coverage", "/emergency/coverage", DISPATCH | REPORTING),
    ("nav.pathways", "/pathways", CLINICAL | REPORTING),
    ("nav.pathway_metrics", "/pathways/metrics", REPORTING),
    ("nav.recognition_repeats", "/recognition/repeats", REPORTING),
    ("nav.chronic", "/chronic", frozenset({Role.CLINICIAN, Role.ORG_ADMIN})),
    ("nav.chronic_worklist", "/chronic/worklist", frozenset({Role.CLINICIAN, Role.ORG_ADMIN})),
    ("nav.chronic_readings", "/chronic/readings/new", frozenset({Role.CLINICIAN, Role.ORG_ADMIN})),
    ("nav.chronic_indicators", "/chronic/indicators", REPORTING | {Role.CLINICIAN}),
    ("nav.screening", "/screening", frozenset({Role.CLINICIAN, Role.ORG_ADMIN, Role.ALLIANCE_ADMIN})),
    ("nav.outreach", "/outreach", ALL_STAFF),
    ("nav.outreach_roster", "/outreach/roster", ADMINS),
    ("nav.outreach_impact", "/outreach/impact", REPORTING),
    ("nav.outreach_public", "/outreach/public", frozenset({Role.PATIENT})),
    ("nav.outreach_bookings", "/outreach/my-bookings", frozenset({Role.PATIENT})),
    ("nav.patients", "/patients", CLINICAL),
    ("nav.directory", "/directory", ALL_STAFF),
    ("nav.map", "/directory/map", ALL_STAFF),
    ("nav.my_record", "/me", frozenset({Role.PATIENT})),
    ("nav.break_glass_review", "/admin/break-glass", ADMINS),
    ("nav.users", "/admin/users", ADMINS),
    ("nav.audit", "/admin/audit", ADMINS),
    ("nav.outbox", "/admin/outbox", ADMINS),
    ("nav.hl7", "/admin/hl7", ADMINS),
]


def menu_for(user: Any) -> list[tuple[str, str]]:
    if user is None:
        return []
    return [(key, path) for key, path, roles in MENU if user.role in roles]


def current_entry(menu: list[tuple[str, str]], path: str) -> str | None:
    """The entry to highlight: the longest menu path that is the page's path or a parent of it."""
    matches = [p for _, p in menu if p == path or (p != "/" and path.startswith(p + "/"))]
    return max(matches, key=len, default=None)
