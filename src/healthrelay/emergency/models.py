"""Emergency tables."""

from __future__ import annotations
