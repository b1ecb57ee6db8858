"""Orthanc (Debian's, with its DICOMweb plugin) as our image archive and as a peer we exchange studies with.

Orthanc binds every interface, so the scenario (tests/interop/orthanc_scenario.py) runs in a private
loopback-only network namespace (`unshare -n`) with its own SQLite database; this test asserts on the
JSON it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.interop.orthanc_scenario import DICOMWEB_PLUGIN, ORTHANC

SCENARIO = Path(__file__).with_name("orthanc_scenario.py")


def _namespace_available() -> str | None:
    for needed in (ORTHANC, DICOMWEB_PLUGIN):
        if not Path(needed).exists():
            return f"{needed} is not installed (Debian packages orthanc and orthanc-dicomweb)"
    try:
        probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare: {exc}"
    if probe.returncode != 0:
        return f"`unshare -n` is not permitted here: {probe.stderr.decode(errors='replace').strip()[:200]}"
    return None


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict:
    reason = _namespace_available()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("orthanc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHRELAY_")}
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, str(SCENARIO),
         str(work)], capture_output=True, timeout=600, env=env, cwd=Path(__file__).resolve().parents[2])
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    assert lines, f"no output from the scenario (exit {proc.returncode}): {proc.stderr.decode()[-3000:]}"
    result = json.loads(lines[-1])
    result["returncode"] = proc.returncode
    return result


def _failed(result: dict) -> str:
    return json.dumps({k: v for k, v in result.items() if k != "checks"}, ensure_ascii=False)[:4000]


def test_orthanc_as_our_archive_returns_every_instance_bit_identical(scenario: dict) -> None:
    checks = scenario["checks"]
    for sample in scenario["facts"]["archive_samples"]:
        assert checks[f"archive_{sample}_in_orthanc"], _failed(scenario)
    for name in ("archive_keys_are_orthanc_ids", "archive_bit_identical", "archive_wado_bit_identical",
                 "archive_rendered_from_orthanc", "archive_resend_is_duplicate",
                 "archive_rollback_removes_from_orthanc"):
        assert checks.get(name), f"{name}: {_failed(scenario)}"
    assert scenario["facts"]["orthanc_instances"] == len(scenario["facts"]["archive_samples"])
    assert checks["orthanc_refuses_anonymous"]


def test_orthanc_sends_us_a_study_over_dimse(scenario: dict) -> None:
    checks = scenario["checks"]
    for name in ("orthanc_echoes_us", "orthanc_store_to_us_accepted", "our_qido_finds_orthancs_study",
                 "our_copy_has_same_pixels", "received_over_dimse_from_orthanc",
                 "study_belongs_to_orthancs_organisation"):
        assert checks.get(name), f"{name}: {_failed(scenario)}"


def test_we_send_orthanc_a_study_by_c_store_and_stow(scenario: dict) -> None:
    checks = scenario["checks"]
    for name in ("c_store_to_orthanc", "stow_to_orthanc", "orthanc_qido_finds_our_study",
                 "orthancs_copy_has_same_pixels"):
        assert checks.get(name), f"{name}: {_failed(scenario)}"
    assert scenario["ok"] and scenario["returncode"] == 0, _failed(scenario)
