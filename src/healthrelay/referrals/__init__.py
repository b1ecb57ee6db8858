"""Two-way referral (双向转诊): up to the lead hospital, down with a care plan, and back up again.

Importing the package registers the escalation timer handler and the care-relationship check, so
every process that loads the models (web app, `healthrelay worker`, Alembic) knows them.
"""

from healthrelay.referrals import flows as flows  # noqa: E402,F401
