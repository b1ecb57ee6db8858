"""Remote consultation (远程会诊) and remote diagnosis: requests, reading worklists, reports, critical results.

Importing the package registers the escalation timer handlers and the care-relationship check, so every
process that loads the models (web app, `healthrelay worker`, Alembic) knows them.
"""

from healthrelay.teleconsult import critical as critical  # noqa: E402,F401
from healthrelay.teleconsult import flows as flows  # noqa: E402,F401
