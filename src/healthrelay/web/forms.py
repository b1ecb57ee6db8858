"""Reading HTML forms: collect every problem, field by field, so a page shows all of them at once."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from healthrelay.core.errors import DomainError, InvalidInput, field_error

LOCAL_INPUT = "%Y-%m-%dT%H:%M"  # what <input type="datetime-local"> sends
_SHANGHAI = ZoneInfo("Asia/Shanghai")


class FormProblems:
    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []

    def add(self, name: str, message: str) -> None:
        self.errors.append(field_error(name, message))

    def opt_int(self, name: str, value: str) -> int | None:
        value = (value or "").strip()
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            self.add(name, "须为数字 / must be a number")
            return None

    def day(self, name: str, value: str, *, required: bool = False) -> date | None:
        """A date typed as YYYY-MM-DD (an <input type="date">); None, and a message when required, if blank."""
        value = (value or "").strip()
        if not value:
            if required:
                self.add(name, "请填写日期 / a date is required")
            return None
        try:
            return date.fromisoformat(value)
        except ValueError:
            self.add(name, "日期格式应为 年-月-日 / use YYYY-MM-DD")
            return None

    def choice(self, name: str, value: str, allowed: type[Any], message: str) -> Any:
        """`allowed(value)` (an enum, say), or None and `message` against the field when it is not one."""
        try:
            return allowed(value) if value else None
        except ValueError:
            self.add(name, message)
            return None

    def raise_if_any(self) -> None:
        if self.errors:
            raise InvalidInput("请检查标红的栏目 / please check the marked fields", field_errors=self.errors)


def messages_by_field(errors: list[dict[str, Any]], on_form: dict[str, str] | None = None) -> dict[str, str]:
    """field -> message for a template (the first message per field wins); `on_form` renames service
    field names to the form's."""
    out: dict[str, str] = {}
    for error in errors:
        name = str(error.get("field", "form"))
        out.setdefault((on_form or {}).get(name, name), str(error.get("message", "")))
    return out


def reraise_if_access(exc: DomainError) -> None:
    """Access problems get the error page (with break-the-glass where it applies), not the form."""
    if exc.status_code in (401, 403, 404):
        raise exc


def parse_local(value: str, field: str) -> datetime:
    """A datetime-local input (Shanghai wall time) as an aware UTC instant."""
    try:
        naive = datetime.strptime(value.strip(), LOCAL_INPUT)
    except ValueError:
        raise InvalidInput("时间格式应为 年-月-日 时:分 / the time must read YYYY-MM-DD HH:MM",
                           field_errors=[field_error(field, "bad time")]) from None
    return naive.replace(tzinfo=_SHANGHAI)
