"""Keep resident ID numbers and mobile numbers out of the logs (PIPL: sensitive personal data).

Search boxes send them in query strings, which the access log would otherwise write in full.
"""

from __future__ import annotations

import logging
import re

from healthrelay.patients.identity import mask_phone, mask_resident_id

_RESIDENT_ID = re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")
_MOBILE = re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)")


def mask_text(text: str) -> str:
    text = _RESIDENT_ID.sub(lambda m: mask_resident_id(m.group(0)), text)
    return _MOBILE.sub(lambda m: mask_phone(m.group(0)), text)


class MaskPersonalNumbers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(mask_text(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = mask_text(record.msg)
        return True


def install() -> None:
    for name in ("uvicorn.access", "uvicorn.error", "healthrelay"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskPersonalNumbers) for f in logger.filters):
            logger.addFilter(MaskPersonalNumbers())
