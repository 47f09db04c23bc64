"""Pydantic models of the Actions service's payloads (protocol reference sections 2-3).

Parsing is forgiving in the ways the Go clients are: keys match case-insensitively (the service
speaks camelCase, the Go clients accept anything and send `RunnerSetting`), unknown fields are
ignored, .NET timestamps with seven fractional digits parse, and the Go zero time means "unset".
Job messages are a tagged union on `messageType`; unknown types are kept as `UnknownJobMessage`
so the listener can log and skip them (forward compatibility).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from scaleset_listener.errors import ProtocolError

_FRACTION = re.compile(r"(\.\d{6})\d+")


def _parse_timestamp(value: object) -> datetime | None:
    """RFC 3339 with up to 7 fractional digits; year 1 (Go's zero time) and empty mean None."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return None if value.year <= 1 else value
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 timestamp")
    parsed = datetime.fromisoformat(_FRACTION.sub(r"\1", value.strip()).replace("Z", "+00:00"))
    return None if parsed.year <= 1 else parsed


Timestamp = Annotated[datetime | None, BeforeValidator(_parse_timestamp)]


def _none_as_zero(value: object) -> object:
    return 0 if value is None else value


def _none_as_empty(value: object) -> object:
    return "" if value is None else value


Int = Annotated[int, BeforeValidator(_none_as_zero)]
Str = Annotated[str, BeforeValidator(_none_as_empty)]


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python, any key casing accepted on input."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )
    _aliases_by_folded_key: ClassVar[dict[str, str]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._aliases_by_folded_key = {}

    @model_validator(mode="before")
    @classmethod
    def _match_keys_case_insensitively(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if not cls._aliases_by_folded_key:
            for name, field in cls.model_fields.items():
                alias = field.alias or name
                cls._aliases_by_folded_key[alias.lower()] = alias
                cls._aliases_by_folded_key[name.lower()] = alias
        return {
            cls._aliases_by_folded_key.get(key.lower(), key): value for key, value in data.items()
        }

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Statistics(WireModel):
    """The scale set's counters; `total_assigned_jobs` is the scaling signal."""

    total_available_jobs: Int = 0
    total_acquired_jobs: Int = 0
    total_assigned_jobs: Int = 0
    total_running_jobs: Int = 0
    total_registered_runners: Int = 0
    total_busy_runners: Int = 0
    total_idle_runners: Int = 0

    def inconsistencies(self) -> list[str]:
        """What disagrees within this snapshot (protocol reference section 4.9)."""
        problems = []
        # Registered runners that are still offline (booting) are neither busy nor idle, so
        # only fewer registered than busy + idle is a contradiction (seen: Registered 0, Busy 2).
        if self.total_registered_runners < self.total_busy_runners + self.total_idle_runners:
            problems.append("registered < busy + idle")
        if self.total_running_jobs > self.total_assigned_jobs:
            problems.append("running > assigned")
        return problems


class Label(WireModel):
    name: str
    type: str = "System"


class RunnerSetting(WireModel):
    ephemeral: bool | None = None
    is_elastic: bool | None = None
    disable_update: bool | None = None


class RunnerGroup(WireModel):
    id: int
    name: Str = ""
    is_default_group: bool = False


class ScaleSet(WireModel):
    id: Int = 0
    name: Str = ""
    runner_group_id: Int = 0
    runner_group_name: Str = ""
    labels: tuple[Label, ...] = ()
    runner_setting: RunnerSetting | None = None
    runner_jit_config_url: Str = ""
    statistics: Statistics | None = None


class SessionScaleSet(WireModel):
    id: Int = 0
    name: Str = ""


class Session(WireModel):
    session_id: Str = ""
    owner_name: Str = ""
    runner_scale_set: SessionScaleSet | None = None
    message_queue_url: Str = ""
    message_queue_access_token: Str = Field(default="", repr=False)
    statistics: Statistics | None = None


class RunnerReference(WireModel):
    id: Int = 0
    name: Str = ""
    runner_scale_set_id: Int = 0
    status: Str = ""
    busy: bool = False


class JitConfig(WireModel):
    runner: RunnerReference
    encoded_jit_config: str = Field(alias="encodedJITConfig", repr=False)


class _JobFields(WireModel):
    runner_request_id: Int = 0
    job_id: Str = ""
    repository_name: Str = ""
    owner_name: Str = ""
    job_workflow_ref: Str = ""
    job_display_name: Str = ""
    workflow_run_id: Int = 0
    event_name: Str = ""
    request_labels: tuple[str, ...] = ()
    queue_time: Timestamp = None
    scale_set_assign_time: Timestamp = None
    runner_assign_time: Timestamp = None
    finish_time: Timestamp = None


class JobAvailable(_JobFields):
    message_type: Literal["JobAvailable"]
    acquire_job_url: Str = ""


class JobAssigned(_JobFields):
    message_type: Literal["JobAssigned"]


class JobStarted(_JobFields):
    message_type: Literal["JobStarted"]
    runner_id: Int = 0
    runner_name: Str = ""


class JobCompleted(_JobFields):
    message_type: Literal["JobCompleted"]
    result: Str = ""
    runner_id: Int = 0
    runner_name: Str = ""


class UnknownJobMessage(WireModel):
    """A job message type this version does not know; logged and skipped."""

    message_type: Str = ""


JobMessage = JobAvailable | JobAssigned | JobStarted | JobCompleted | UnknownJobMessage
_KNOWN_JOB_MESSAGES: dict[str, type[WireModel]] = {
    "jobavailable": JobAvailable,
    "jobassigned": JobAssigned,
    "jobstarted": JobStarted,
    "jobcompleted": JobCompleted,
}


class MessageEnvelope(WireModel):
    """One long-poll answer: a batch of job messages (as a JSON string) plus statistics."""

    message_id: Int = 0
    message_type: Str = ""
    body: Str = ""
    statistics: Statistics | None = None


JOB_MESSAGES_TYPE = "RunnerScaleSetJobMessages"
ModelT = TypeVar("ModelT", bound=WireModel)


def parse_job_messages(body: str) -> list[JobMessage]:
    """The batch inside an envelope's `body`: a JSON string holding a JSON array (may be empty).

    One malformed element does not lose the others: it becomes an UnknownJobMessage.
    """
    if not body.strip():
        return []
    try:
        items = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"message body is not JSON: {exc.msg} at {exc.pos}") from exc
    if not isinstance(items, list):
        raise ProtocolError("message body is not a JSON array of job messages")
    return parse_job_items(items)


def parse_job_items(items: list[Any]) -> list[JobMessage]:
    """Job messages from decoded JSON; unknown or malformed ones become UnknownJobMessage."""
    messages: list[JobMessage] = []
    for item in items:
        kind = _folded_message_type(item)
        model = _KNOWN_JOB_MESSAGES.get(kind)
        if model is None:
            messages.append(UnknownJobMessage(message_type=_raw_message_type(item)))
            continue
        try:
            messages.append(cast(JobMessage, model.model_validate(item)))
        except ValidationError:
            messages.append(UnknownJobMessage(message_type=f"malformed {_raw_message_type(item)}"))
    return messages


def _raw_message_type(item: object) -> str:
    if isinstance(item, dict):
        for key, value in item.items():
            if isinstance(key, str) and key.lower() == "messagetype":
                return str(value)
    return ""


def _folded_message_type(item: object) -> str:
    return _raw_message_type(item).lower()


def parse_model(model: type[ModelT], data: object, what: str) -> ModelT:
    """Validate decoded JSON into `model`, or raise ProtocolError naming what was parsed."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise ProtocolError(
            f"{what}: unexpected response shape at {where}: {first['msg']}"
        ) from exc
