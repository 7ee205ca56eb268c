"""Structured JSON logs (with request ids and URL passwords redacted) and metrics."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

from fusion_prime.platform.database import redact_text

DATABASE_UP = Gauge("fp_database_up", "1 when the last database check succeeded", ["service"])
DATABASE_ERRORS = Counter(
    "fp_database_errors_total", "Database checks or requests that failed", ["service"]
)
REQUEST_LATENCY = Histogram(
    "fp_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


# an API key anywhere in a log value: keep its lookup id, cut the secret (platform/auth.py)
_API_KEY = re.compile(r"\b(fpk_[0-9a-f]{12})_[A-Za-z0-9_\-]+")


def _redact(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = _API_KEY.sub(r"\1_***", redact_text(value))
    return event_dict


_configured = False


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for our logs and for uvicorn's, all through the redactor."""
    global _configured
    if _configured:
        return
    _configured = True
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
