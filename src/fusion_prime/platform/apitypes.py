"""Request value types shared by the services' routers."""

from __future__ import annotations

from datetime import datetime, time
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator


def _date_time_text(value: Any) -> Any:
    """A date-time (or time) parameter is RFC 3339 text, as the OpenAPI document says (format
    date-time). Pydantic's lax mode also takes a bare number as Unix seconds, so `since=0.5`
    meant 1970 and was answered 200 instead of being refused (found by schemathesis)."""
    if isinstance(value, int | float) or (
        isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit()
    ):
        raise ValueError("expected RFC 3339 text such as 2026-01-01T00:00:00Z or 22:00")
    return value


DateTimeText = Annotated[datetime, BeforeValidator(_date_time_text)]
AwareDateTimeText = Annotated[AwareDatetime, BeforeValidator(_date_time_text)]
TimeText = Annotated[time, BeforeValidator(_date_time_text)]
