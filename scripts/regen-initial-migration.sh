#!/usr/bin/env bash
# Regenerate migration 0001 from the models (only while nothing has landed in production).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f src/healthrelay/migrations/versions/0001_*.py
tmp=$(mktemp -d)
HEALTHRELAY_DATA_DIR="$tmp" .venv/bin/python - "$tmp" <<'PY'
import sys
import healthrelay.models  # noqa: F401
from alembic import command
from healthrelay.core.migrate import alembic_config
cfg = alembic_config(f"sqlite:///{sys.argv[1]}/x.sqlite3")
command.revision(cfg, message="foundation", autogenerate=True, rev_id="0001")
PY
rm -rf "$tmp"
