#!/usr/bin/env bash
# Sets up HealthRelay and runs the whole test suite twice: on SQLite, then on a PostgreSQL
# server this script starts on 127.0.0.1 in a temporary data dir. Also lints and runs the
# benchmarks in smoke mode. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test

echo "==> ruff"
.venv/bin/ruff check .

echo "==> tests on SQLite"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

echo "==> starting PostgreSQL on 127.0.0.1"
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pgdir=$(mktemp -d /tmp/healthrelay-pg.XXXXXX)
pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres: "$pgdir"
  as_pg=(runuser -u postgres --)
fi
stop_pg() { "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pgdir"; }
trap stop_pg EXIT
"${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -U healthrelay --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $pgport -k $pgdir -c fsync=off -c max_connections=200" start >/dev/null
"${as_pg[@]}" "$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U healthrelay healthrelay_test
export HEALTHRELAY_TEST_DATABASE_URL="postgresql+psycopg://healthrelay@127.0.0.1:$pgport/healthrelay_test"

echo "==> tests on PostgreSQL"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"

echo "==> benchmarks (smoke mode)"
for b in bench/*.py; do
  [ -e "$b" ] || continue
  .venv/bin/python "$b" --smoke
done
echo "==> all tests passed on SQLite and PostgreSQL"
