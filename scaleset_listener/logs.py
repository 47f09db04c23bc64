"""Logging: structlog events rendered as text lines or JSON, stdlib loggers routed the same way.

Events are stable snake_case names with values in keys (`runner_statistics`, `session_created`).
In text format the statistics event reads like the Orka integration's line, so operators who
grep for "Runner Set Statistics" keep working.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from scaleset_listener.config import LogFormat, LogLevel

_STATISTICS_FIELDS = (
    ("available", "Available"),
    ("acquired", "Acquired"),
    ("assigned", "Assigned"),
    ("running", "Running"),
    ("registered", "Registered Runners"),
    ("busy", "Busy"),
    ("idle", "Idle"),
)
_NOISY_LIBRARIES = ("httpx", "httpcore", "openstack", "keystoneauth", "paramiko", "urllib3")


def _statistics_line(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    if event_dict.get("event") == "runner_statistics":
        summary = ", ".join(
            f"{label}: {event_dict.pop(key, 0)}" for key, label in _STATISTICS_FIELDS
        )
        event_dict["event"] = f"Runner Set Statistics - {summary}"
    return event_dict


def configure(level: LogLevel, log_format: LogFormat, stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger once, at start."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if log_format is LogFormat.JSON:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        shared.append(_statistics_line)
        renderer = structlog.dev.ConsoleRenderer(colors=False, sort_keys=False)

    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric_level = logging.getLevelName(level.value.upper())
    root.setLevel(numeric_level)
    for name in _NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric_level))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
