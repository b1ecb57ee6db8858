#!/usr/bin/env bash
# Installs what HealthRelay needs on a Debian machine: system packages, a virtualenv with the
# Python packages, and the front-end packages from package-lock.json.
#   scripts/setup.sh          what the demo needs
#   scripts/setup.sh --test   plus PostgreSQL, Chromium and the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

# Debian packages, each installed only when what it provides is missing (some machines bring
# their own Node.js or Python, whose packages would conflict with Debian's).
missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
command -v npm >/dev/null || missing+=(nodejs npm)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
[ -e /usr/include/python3*/Python.h ] || python3 -c 'import sysconfig,os,sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"]+"/Python.h"))' || missing+=(python3-dev)
have_pkg fonts-noto-cjk || missing+=(fonts-noto-cjk)
# WeasyPrint (PDF referral slips) draws text with Pango.
have_pkg libpango-1.0-0 || missing+=(libpango-1.0-0)
have_pkg libpangoft2-1.0-0 || missing+=(libpangoft2-1.0-0)
if [ "$want_tests" = 1 ]; then
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  # Real DICOM peers for the interop tests and bench/dicom_ingest.py: dcmtk's storescu/echoscu/storescp
  # and Orthanc with its DICOMweb plugin.
  command -v storescu >/dev/null || missing+=(dcmtk)
  have_pkg orthanc || missing+=(orthanc)
  have_pkg orthanc-dicomweb || missing+=(orthanc-dicomweb)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating virtualenv .venv"
  python3 -m venv .venv
fi
echo "==> installing Python packages"
.venv/bin/python -m pip install -q --upgrade pip
if [ "$want_tests" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi

echo "==> installing front-end packages (npm ci)"
npm ci --no-audit --no-fund --loglevel=error
