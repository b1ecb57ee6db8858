"""Placeholder until the demo builder lands."""
from collections.abc import Callable
from typing import Any


def build_demo_if_missing(*, seed: int, residents: int, progress: Callable[[str], None]) -> None:
    progress("demo builder not written yet")


def demo_accounts_document() -> dict[str, Any]:
    return {"accounts": []}
