#!/usr/bin/env bash
# Autogenerate the next Alembic revision from the models: scripts/new-migration.sh NNNN "message".
# Review the file it writes (data seeding and PostgreSQL-only details are added by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
rev="$1"; message="$2"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
HEALTHRELAY_DATA_DIR="$tmp" .venv/bin/python - "$tmp" "$rev" "$message" <<'PY'
import sys
import healthrelay.models  # noqa: F401
from alembic import command
from healthrelay.core.migrate import alembic_config
cfg = alembic_config(f"sqlite:///{sys.argv[1]}/x.sqlite3")
command.upgrade(cfg, "head")
command.revision(cfg, message=sys.argv[3], autogenerate=True, rev_id=sys.argv[2])
PY
