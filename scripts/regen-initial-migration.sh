#!/usr/bin/env bash
# Regenerate migration 0001 from the models (only while nothing has landed in production).
set -euo pipefail
cd "$(dirname "$0")/.."
versions=src/healthrelay/migrations/versions
tmp=$(mktemp -d)
# Later hand-written revisions build on 0001: set them aside while 0001 is regenerated.
mkdir "$tmp/later"
find "$versions" -maxdepth 1 -name '*.py' ! -name '0001_*' -exec mv {} "$tmp/later/" \;
trap 'mv "$tmp"/later/*.py "$versions"/ 2>/dev/null; rm -rf "$tmp"' EXIT
rm -f "$versions"/0001_*.py
HEALTHRELAY_DATA_DIR="$tmp" .venv/bin/python - "$tmp" <<'PY'
import sys
import healthrelay.models  # noqa: F401
from alembic import command
from healthrelay.core.migrate import alembic_config
cfg = alembic_config(f"sqlite:///{sys.argv[1]}/x.sqlite3")
command.revision(cfg, message="foundation", autogenerate=True, rev_id="0001")
PY
