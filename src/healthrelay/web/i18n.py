"""Chinese first, English second: message catalogues keyed by dotted ids."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

SUPPORTED = ("zh", "en")
DEFAULT = "zh"
_DIR = Path(__file__).parent / "i18n"


@lru_cache
def catalogue(locale: str) -> dict[str, str]:
    """The web catalogue plus every domain's own `<domain>/i18n/<locale>.json`."""
    merged: dict[str, str] = json.loads((_DIR / f"{locale}.json").read_text(encoding="utf-8"))
    # A domain may split its catalogue: `<locale>.json` plus `<part>.<locale>.json`.
    root = _DIR.parent.parent
    for path in sorted(root.glob(f"*/i18n/{locale}.json")) + sorted(root.glob(f"*/i18n/*.{locale}.json")):
        if path.parent != _DIR:
            merged.update(json.loads(path.read_text(encoding="utf-8")))
    return merged


def translate(key: str, locale: str = DEFAULT, **params: object) -> str:
    """Falls back to Chinese, then to the key itself, so a missing entry never breaks a page."""
    text = catalogue(locale).get(key) or catalogue(DEFAULT).get(key) or key
    return text.format(**params) if params else text


def pick_locale(cookie_value: str | None, user_locale: str | None = None,
                accept_language: str | None = None) -> str:
    for candidate in (cookie_value, user_locale):
        if candidate in SUPPORTED:
            return candidate
    if accept_language and accept_language.lower().startswith("en"):
        return "en"
    return DEFAULT
