"""Pydantic models of the Actions service's payloads (docs/architecture.md, Protocol notes).

Parsing is forgiving in the ways the Go clients are: keys match case-insensitively (the service
speaks camelCase, the Go clients accept anything and send `RunnerSetting`), unknown fields are
ignored, .NET timestamps with seven fractional digits parse, and the Go zero time means "unset".
Job messages are a tagged union on `messageType`; unknown types are kept as `UnknownJobMessage`
so the listener can log and skip them (forward compatibility).

A part the service sends in a shape this version cannot read (a schema change on GitHub's side,
e.g. `"totalAssignedJobs": "lots"`) must not make the whole answer unusable: a message that
cannot be parsed is never acknowledged and blocks the queue for every later one. So models name
their tolerant parts (`_tolerant`): when such a part fails validation it is left at its default
and described in `unparseable` (field path, reason, a short masked excerpt) for the caller to
log. Job messages are read one by one for the same reason (`UnparseableJobMessage`). Only what
the caller cannot do without stays strict, such as a message's `messageId` (without it the
message cannot be acknowledged).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

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

EXCERPT_LENGTH = 60
# Values shaped like credentials are masked even in an excerpt: JWTs (admin and queue tokens),
# GitHub tokens, and long base64 runs (JIT configs, keys). UUIDs (job ids) have dashes every
# few characters and stay readable.
_SECRET_SHAPED = re.compile(
    r"eyJ[\w-]*\.[\w.-]*|\b(?:gh[pousr]_|github_pat_)\w+|[A-Za-z0-9+/=]{40,}"
)
_SECRET_FIELD = re.compile(r"token|secret|jitconfig|password|key", re.IGNORECASE)


def _mask_secret_fields(value: object) -> object:
    if isinstance(value, dict):
        return {
            key: "<redacted>"
            if isinstance(key, str) and _SECRET_FIELD.search(key)
            else _mask_secret_fields(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_mask_secret_fields(item) for item in value]
    return value


def excerpt(value: object, limit: int = EXCERPT_LENGTH) -> str:
    """A short, log-safe rendering of an offending value: JSON, credentials masked, truncated."""
    try:
        text = json.dumps(_mask_secret_fields(value), separators=(",", ":"), default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    # Masked before truncating, so a cut never leaves the start of a token behind.
    text = _SECRET_SHAPED.sub("<redacted>", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path(loc: Sequence[int | str]) -> str:
    """pydantic's error location as a field path: `statistics.totalAssignedJobs`, `labels[2]`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


@dataclass(frozen=True)
class Unparseable:
    """A part of an answer this version could not read; it was treated as absent."""

    part: str  # what was dropped: a top-level key (statistics, body) or a batch element (body[3])
    field: str  # the first offending field's path: statistics.totalAssignedJobs, body[3].jobId
    reason: str
    excerpt: str

    @classmethod
    def from_error(cls, error: ErrorDetails, prefix: str = "") -> Unparseable:
        field = _path(error["loc"])
        field = f"{prefix}.{field}" if prefix and field else prefix or field
        value = error.get("input")
        return cls(
            part=prefix or _path(error["loc"][:1]),
            field=field,
            reason=error["msg"],
            excerpt="<redacted>" if _SECRET_FIELD.search(field) else excerpt(value),
        )

    def log_fields(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason, "excerpt": self.excerpt}


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python, any key casing accepted on input."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )
    # Aliases of the fields that are dropped (left at their default) when unreadable, instead of
    # failing the whole answer; what was dropped is in `unparseable`.
    _tolerant: ClassVar[frozenset[str]] = frozenset()
    _aliases_by_folded_key: ClassVar[dict[str, str]]
    _unparseable: tuple[Unparseable, ...] = PrivateAttr(default=())

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._aliases_by_folded_key = {}

    @classmethod
    def _fold_keys(cls, data: dict[Any, Any]) -> dict[Any, Any]:
        if not cls._aliases_by_folded_key:
            for name, field in cls.model_fields.items():
                alias = field.alias or name
                cls._aliases_by_folded_key[alias.lower()] = alias
                cls._aliases_by_folded_key[name.lower()] = alias
        return {
            cls._aliases_by_folded_key.get(key.lower(), key) if isinstance(key, str) else key: value
            for key, value in data.items()
        }

    @model_validator(mode="wrap")
    @classmethod
    def _read_wire_form(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        """Match keys case-insensitively, and drop tolerant parts that fail validation."""
        if not isinstance(data, dict):
            return handler(data)
        data = cls._fold_keys(data)
        if not cls._tolerant:
            return handler(data)
        try:
            return handler(data)
        except ValidationError as exc:
            first_by_part: dict[str, ErrorDetails] = {}
            for error in exc.errors():
                part = error["loc"][0] if error["loc"] else None
                if isinstance(part, str) and part in cls._tolerant:
                    first_by_part.setdefault(part, error)
            if not first_by_part:
                raise
            # Raises again if a strict field is wrong too, then naming only the strict ones.
            model = handler({k: v for k, v in data.items() if k not in first_by_part})
        model._unparseable = tuple(Unparseable.from_error(e) for e in first_by_part.values())
        return model

    @property
    def unparseable(self) -> tuple[Unparseable, ...]:
        """The tolerant parts that could not be read (and were left at their default)."""
        return self._unparseable

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
        """What disagrees within this snapshot (docs/architecture.md#statistics)."""
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

    # Unused by the listener; a statistics schema change must not break finding the scale set.
    _tolerant = frozenset({"statistics"})


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

    # Unreadable initial statistics are treated as missing; the session itself still works.
    _tolerant = frozenset({"statistics"})


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


@dataclass(frozen=True)
class UnparseableJobMessage:
    """A job message this version cannot read: not an object, or a known type whose fields do
    not validate (a schema change). Logged precisely; the job it was about is found again by
    the acquirable-jobs look-up and the next statistics."""

    index: int  # its position in the batch
    message_type: str
    problem: Unparseable


JobMessage = (
    JobAvailable
    | JobAssigned
    | JobStarted
    | JobCompleted
    | UnknownJobMessage
    | UnparseableJobMessage
)
_KNOWN_JOB_MESSAGES: dict[str, type[WireModel]] = {
    "jobavailable": JobAvailable,
    "jobassigned": JobAssigned,
    "jobstarted": JobStarted,
    "jobcompleted": JobCompleted,
}


class MessageEnvelope(WireModel):
    """One long-poll answer: a batch of job messages (as a JSON string) plus statistics.

    Everything but `messageId` is tolerant: a message whose id can be read can be acknowledged,
    so the queue moves on even when the rest of it cannot be understood.
    """

    message_id: Int = 0
    message_type: Str = ""
    body: Str = ""
    statistics: Statistics | None = None

    _tolerant = frozenset({"messageType", "body", "statistics"})

    def unreadable(self, part: str) -> bool:
        """True when the envelope's `part` (its wire name) was sent but could not be read."""
        return any(problem.part == part for problem in self.unparseable)


class UnparseableBody(ProtocolError):
    """A message body that is not a JSON array of job messages; `problem` says how."""

    def __init__(self, problem: Unparseable) -> None:
        super().__init__(f"message body: {problem.reason}")
        self.problem = problem


JOB_MESSAGES_TYPE = "RunnerScaleSetJobMessages"
ModelT = TypeVar("ModelT", bound=WireModel)


def parse_envelope(data: object, what: str) -> MessageEnvelope:
    """A long-poll answer; ProtocolError only when its `messageId` cannot be read.

    Such a message cannot be acknowledged (nor skipped with `lastMessageId`), so there is
    nothing better to do than to fail loudly; every other unreadable part is tolerated.
    """
    if not isinstance(data, dict):
        raise ProtocolError(f"{what}: the answer is not a JSON object: {excerpt(data)}")
    try:
        envelope = MessageEnvelope.model_validate(data)
    except ValidationError as exc:
        # Every other part is tolerant, so what failed is the messageId.
        first = exc.errors()[0]
        raise ProtocolError(
            f"{what}: unreadable messageId {excerpt(first.get('input'))} "
            f"({first['msg']}); the message cannot be acknowledged"
        ) from exc
    if envelope.message_id <= 0:
        raise ProtocolError(f"{what}: the message has no messageId; it cannot be acknowledged")
    return envelope


def parse_job_messages(body: str) -> list[JobMessage]:
    """The batch inside an envelope's `body`: a JSON string holding a JSON array (may be empty).

    Raises UnparseableBody when the body is not a JSON array. One unreadable element does not
    lose the others: it becomes an UnparseableJobMessage whose path starts with `body[i]`.
    """
    if not body.strip():
        return []
    try:
        items = json.loads(body)
    except json.JSONDecodeError as exc:
        raise UnparseableBody(
            Unparseable("body", "body", f"not JSON: {exc.msg} at {exc.pos}", excerpt(body))
        ) from exc
    if not isinstance(items, list):
        raise UnparseableBody(
            Unparseable("body", "body", "not a JSON array of job messages", excerpt(items))
        )
    return parse_job_items(items, where="body")


def parse_job_items(items: list[Any], where: str = "") -> list[JobMessage]:
    """Job messages from decoded JSON: unknown types become UnknownJobMessage, unreadable ones
    UnparseableJobMessage (`where` prefixes their field paths: `body` gives `body[3].x`)."""
    messages: list[JobMessage] = []
    for index, item in enumerate(items):
        position = f"{where}[{index}]"
        if not isinstance(item, dict):
            problem = Unparseable(position, position, "not a JSON object", excerpt(item))
            messages.append(UnparseableJobMessage(index, "", problem))
            continue
        model = _KNOWN_JOB_MESSAGES.get(_folded_message_type(item))
        if model is None:
            messages.append(UnknownJobMessage(message_type=_raw_message_type(item)))
            continue
        try:
            messages.append(cast(JobMessage, model.model_validate(item)))
        except ValidationError as exc:
            problem = Unparseable.from_error(exc.errors()[0], prefix=position)
            messages.append(UnparseableJobMessage(index, _raw_message_type(item), problem))
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
