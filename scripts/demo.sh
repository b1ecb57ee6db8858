#!/usr/bin/env bash
# Sets up HealthRelay and serves the demo county on the embedded SQLite database.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/healthrelay demo "$@"
