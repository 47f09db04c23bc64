"""Who owns a server: the tags and metadata every runner VM carries, written and read only here.

Ownership is written on the resource so that inventory always comes from the cloud, never from
process memory (docs/architecture.md#ownership). Tags are the part Nova can filter on
server-side (`tags=` needs compute microversion 2.52; Nova silently ignores metadata filters),
metadata carries the details:

    tags      scaleset-runner                    the fixed role
              scaleset-listener:<instance>       which listener deployment (staging vs prod)
              scaleset-set:<scale set id>        which scale set
    metadata  scaleset-runner-name, scaleset-scale-set-name, scaleset-created-at,
              scaleset-host-key (the VM's SSH host public key, for pinning)

Nova tags are at most 60 characters and may not contain '/' or ','.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

ROLE_TAG = "scaleset-runner"
# A failed VM kept for debugging (KEEP_FAILED_VMS): no longer counted or swept.
FAILED_TAG = "scaleset-failed"
LISTENER_TAG_PREFIX = "scaleset-listener:"
SCALE_SET_TAG_PREFIX = "scaleset-set:"

META_RUNNER_NAME = "scaleset-runner-name"
META_SCALE_SET_NAME = "scaleset-scale-set-name"
META_CREATED_AT = "scaleset-created-at"
META_HOST_KEY = "scaleset-host-key"
# When a failed VM was kept for debugging: FAILED_VM_RETENTION counts from here.
META_FAILED_AT = "scaleset-failed-at"

MAX_TAG_LENGTH = 60
MAX_METADATA_VALUE_LENGTH = 255
_TAG_SAFE = re.compile(r"^[^/,]+$")
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9._-]{1,40}$")


class NamingError(ValueError):
    """A value cannot be written as an ownership tag."""


def _tag(prefix: str, value: str) -> str:
    tag = prefix + value
    if len(tag) > MAX_TAG_LENGTH or not _TAG_SAFE.match(tag):
        raise NamingError(f"{tag!r} is not a valid Nova tag (<= 60 characters, no '/' or ',')")
    return tag


def validate_instance_id(instance_id: str) -> str:
    if not _INSTANCE_ID.match(instance_id):
        raise NamingError(
            f"listener instance id {instance_id!r}: use 1-40 letters, digits, '.', '_' or '-'"
        )
    return instance_id


@dataclass(frozen=True)
class Ownership:
    """The listener deployment and scale set a server belongs to."""

    listener_instance: str
    scale_set_id: int

    def tags(self) -> tuple[str, ...]:
        """Every tag a runner VM of this owner carries; also the server-side list filter."""
        return (
            ROLE_TAG,
            _tag(LISTENER_TAG_PREFIX, validate_instance_id(self.listener_instance)),
            _tag(SCALE_SET_TAG_PREFIX, str(self.scale_set_id)),
        )

    def listener_tags(self) -> tuple[str, ...]:
        """The filter for every scale set of this listener deployment."""
        return (ROLE_TAG, _tag(LISTENER_TAG_PREFIX, validate_instance_id(self.listener_instance)))


def runner_name(scale_set_name: str) -> str:
    """`<scale set>-<8 hex>`: the runner's name at GitHub and the server's name in the cloud."""
    return f"{scale_set_name}-{secrets.token_hex(4)}"


def ownership_metadata(
    runner: str,
    scale_set_name: str,
    created_at: datetime,
    host_public_key: str | None = None,
) -> dict[str, str]:
    metadata = {
        META_RUNNER_NAME: runner,
        META_SCALE_SET_NAME: scale_set_name,
        META_CREATED_AT: created_at.astimezone(UTC).isoformat(timespec="seconds"),
    }
    if host_public_key:
        metadata.update(host_key_metadata(host_public_key))
    return metadata


def failed_metadata(failed_at: datetime) -> dict[str, str]:
    """The metadata that dates a failed VM kept for debugging (with FAILED_TAG)."""
    return {META_FAILED_AT: failed_at.astimezone(UTC).isoformat(timespec="seconds")}


def _datetime(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def host_key_metadata(host_public_key: str) -> dict[str, str]:
    """The metadata that records a server's SSH host key (`<type> <base64>`) for pinning."""
    # Nova metadata values are at most 255 characters: an ed25519 key fits, RSA does not.
    key = host_public_key.strip()
    if not key or len(key) > MAX_METADATA_VALUE_LENGTH:
        raise NamingError(
            f"a host public key of {len(key)} characters cannot be recorded: Nova metadata "
            f"values are 1 to {MAX_METADATA_VALUE_LENGTH} characters (use an ed25519 host key)"
        )
    return {META_HOST_KEY: key}


@dataclass(frozen=True)
class OwnedServerInfo:
    """What the ownership marks of one server say."""

    ownership: Ownership
    runner_name: str
    scale_set_name: str
    created_at: datetime | None
    host_public_key: str | None
    failed_at: datetime | None = None


def parse_ownership(tags: tuple[str, ...], metadata: Mapping[str, str]) -> OwnedServerInfo | None:
    """The ownership of a server, or None when it is not one of ours (a foreign server)."""
    if ROLE_TAG not in tags:
        return None
    listener = next(
        (t[len(LISTENER_TAG_PREFIX) :] for t in tags if t.startswith(LISTENER_TAG_PREFIX)), None
    )
    scale_set = next(
        (t[len(SCALE_SET_TAG_PREFIX) :] for t in tags if t.startswith(SCALE_SET_TAG_PREFIX)), None
    )
    if listener is None or scale_set is None or not scale_set.isdigit():
        return None
    return OwnedServerInfo(
        ownership=Ownership(listener, int(scale_set)),
        runner_name=metadata.get(META_RUNNER_NAME, ""),
        scale_set_name=metadata.get(META_SCALE_SET_NAME, ""),
        created_at=_datetime(metadata.get(META_CREATED_AT, "")),
        host_public_key=metadata.get(META_HOST_KEY) or None,
        failed_at=_datetime(metadata.get(META_FAILED_AT, "")),
    )
