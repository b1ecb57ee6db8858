"""A small demo county (600 residents) built into the per-test database."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL = 600
SEED = 2026


@pytest.fixture
def built(database_url: str, data_dir: Path) -> list[str]:
    """Build the demo through the real entry point; returns the progress lines it printed."""
    from healthrelay.demo.build import build_demo_if_missing

    lines: list[str] = []
    assert build_demo_if_missing(seed=SEED, residents=SMALL, progress=lines.append) is True
    return lines
