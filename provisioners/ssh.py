"""The SSH prober: what a runner VM's sentinel files and processes say, over one SSH command.

The only module that imports paramiko. One probe is: our own TCP socket (TCP_NODELAY, and
TCP_QUICKACK re-armed on every read where Linux has it), the SSH handshake, the host key checked
against the key recorded for the server, public-key auth, one POSIX `sh` command, a strict parse of
its report. Every stage has its own timeout, and the whole probe has a hard deadline that the
awaiting side enforces (see docs/ssh-probe.md).

Invariants:
* A probe that was cut off, or whose answer cannot be parsed, never reads as "dead":
  `runner_alive`, `setup_complete` and the sentinel fields are None unless the outcome is `ok`.
* The recorded host key is required unless the policy says otherwise; a different key is
  refused before authentication and reported (`host_key_mismatch`), never probed further.
* The client's private key stays in this process: it is loaded once, never printed. The probe
  never reads a process's command line (the runner's carries the JIT config).
* Probes run on the prober's own bounded thread pool (`max_workers`); a probe takes a slot
  before its clock starts, so queueing never eats into a host's deadline.

    ProvisionerError                     (provisioners.base)
    └── PermanentProvisionerError
        └── SSHProbeConfigError          the client key cannot be loaded, a setting is invalid
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import errno
import hashlib
import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from provisioners.base import HostKeyPolicy, PermanentProvisionerError, ProbeOutcome, ProbeResult
from provisioners.sentinels import (
    DEFAULT_SENTINEL_DIR,
    MAX_REPORT_BYTES,
    ReportError,
    SentinelReport,
    parse_report,
    remote_command,
)

log = logging.getLogger(__name__)

# paramiko's transport threads log every failed handshake with a traceback at ERROR. They log to
# this channel instead of "paramiko.transport"; it is quiet unless an operator lowers its level.
PARAMIKO_LOG_CHANNEL = "provisioners.ssh.paramiko"
logging.getLogger(PARAMIKO_LOG_CHANNEL).setLevel(logging.CRITICAL)

MAX_STDERR_BYTES = 2048


class SSHProbeConfigError(PermanentProvisionerError):
    """The prober cannot work with these settings (unreadable client key, bad timeouts)."""


@dataclass(frozen=True)
class SSHProbeConfig:
    """Settings of one prober. The four stage timeouts bound each paramiko call; `deadline` is
    the hard limit for a whole probe, counted from when it gets a worker."""

    user: str
    private_key_path: Path
    connect_timeout: float = 10.0  # TCP handshake
    banner_timeout: float = 10.0  # SSH banner, then the key exchange (each)
    auth_timeout: float = 10.0  # public-key authentication
    command_timeout: float = 10.0  # channel open, the command, its output and exit status
    deadline: float = 20.0  # the whole probe
    host_key_policy: HostKeyPolicy = HostKeyPolicy.PINNED
    sentinel_dir: str = DEFAULT_SENTINEL_DIR
    max_workers: int = 200
    port: int = 22

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "banner_timeout", "auth_timeout", "command_timeout"):
            if not getattr(self, name) > 0:
                raise SSHProbeConfigError(f"{name} must be positive")
        if not self.deadline > 0:
            raise SSHProbeConfigError("deadline must be positive")
        if not 1 <= self.max_workers <= 4096:
            raise SSHProbeConfigError("max_workers must be between 1 and 4096")
        if not 0 < self.port < 65536:
            raise SSHProbeConfigError(f"port {self.port} is not a TCP port")
        if not self.sentinel_dir.startswith("/"):
            raise SSHProbeConfigError("sentinel_dir must be an absolute path")
        if not self.user:
            raise SSHProbeConfigError("user must not be empty")
        try:
            policy = HostKeyPolicy(self.host_key_policy)
        except ValueError:
            allowed = ", ".join(item.value for item in HostKeyPolicy)
            raise SSHProbeConfigError(
                f"SSH_HOST_KEY_POLICY {self.host_key_policy!r} is not one of: {allowed}"
            ) from None
        object.__setattr__(self, "host_key_policy", policy)

    @classmethod
    def from_timeout(
        cls, timeout: float, *, user: str, private_key_path: Path, **overrides: object
    ) -> SSHProbeConfig:
        """The settings' one `SSH_PROBE_TIMEOUT`: every stage gets it, the deadline twice it."""
        values: dict[str, object] = {
            "connect_timeout": timeout,
            "banner_timeout": timeout,
            "auth_timeout": timeout,
            "command_timeout": timeout,
            "deadline": 2 * timeout,
        }
        values.update(overrides)
        return cls(user=user, private_key_path=private_key_path, **values)  # type: ignore[arg-type]


def parse_public_key(line: str) -> paramiko.PKey:
    """`<type> <base64> [comment]` (an OpenSSH public key line) as a paramiko key."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("a public key line is `<type> <base64> [comment]`")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        return paramiko.PKey.from_type_string(parts[0], blob)
    except Exception as exc:  # paramiko's UnknownKeyType is a bare Exception
        raise ValueError(f"not a usable {parts[0]} public key") from exc


def _load_private_key(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise SSHProbeConfigError(f"VM_SSH_PRIVATE_KEY_PATH {path} does not exist") from None
    except (OSError, paramiko.SSHException, ValueError, TypeError) as exc:
        # The exception text may quote the file; name only its type.
        raise SSHProbeConfigError(
            f"cannot load the SSH private key {path} "
            f"({type(exc).__name__}; it must be an unencrypted OpenSSH or PEM key)"
        ) from None


def public_key_of(private_key_path: Path) -> str:
    """The OpenSSH public key line (`<type> <base64>`) of the probe's private key: what the
    bootstrap authorizes on each VM. Only the public half ever leaves this function."""
    key = _load_private_key(private_key_path)
    return f"{key.get_name()} {key.get_base64()}"


def fingerprint(key: paramiko.PKey) -> str:
    """`SHA256:...` as `ssh-keygen -l` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _CutOff(Exception):
    """The awaiting side gave up on this probe (deadline or close)."""


class _Failed(Exception):
    def __init__(self, outcome: ProbeOutcome, detail: str, host_key: str | None = None) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail
        self.host_key = host_key


if hasattr(socket, "TCP_QUICKACK"):
    _QUICKACK: int | None = socket.TCP_QUICKACK
else:  # pragma: no cover - not Linux
    _QUICKACK = None


class _ProbeSocket(socket.socket):
    """A TCP socket that re-arms TCP_QUICKACK before every read (Linux only): without it the
    SSH handshake's write-write-read pattern waits out the peer's delayed ACK several times."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if _QUICKACK is not None:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return super().recv(bufsize, flags)


class _Attempt:
    """One probe's state, shared by its worker thread and the awaiting side."""

    def __init__(self, address: str, pinned: paramiko.PKey | None) -> None:
        self.address = address
        self.pinned = pinned
        self.stage = "waiting for a worker"
        self.cut_off = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._transport: paramiko.Transport | None = None

    def attach(self, sock: socket.socket, transport: paramiko.Transport | None = None) -> None:
        with self._lock:
            self._sock = sock
            self._transport = transport
            if self.cut_off.is_set():
                raise _CutOff

    def enter(self, stage: str) -> None:
        if self.cut_off.is_set():
            raise _CutOff
        self.stage = stage

    def abort(self) -> None:
        """Stop the worker soon: it notices at its next read (the socket is shut down)."""
        with self._lock:
            self.cut_off.set()
            sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


_PROBER_NUMBERS = itertools.count(1)


class SSHProber:
    """Probes VMs over SSH. Create it in the event loop that will use it; `close()` it."""

    def __init__(self, config: SSHProbeConfig) -> None:
        self.config = config
        self._pkey = _load_private_key(config.private_key_path)
        # A VM whose bootstrap installed the probe's entry runs its forced command instead;
        # one without it (made before that entry existed) runs this.
        self._command = remote_command(config.sentinel_dir)
        # Its workers' names start with this (one prefix per prober, for tests and debugging).
        self.thread_name_prefix = f"ssh-probe-{next(_PROBER_NUMBERS)}"
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.max_workers, thread_name_prefix=self.thread_name_prefix
        )
        self._slots = asyncio.Semaphore(config.max_workers)
        self._attempts: set[_Attempt] = set()
        self._closed = False

    async def probe(self, address: str, pinned_public_key: str | None) -> ProbeResult:
        """Probe one VM. Never raises for anything the VM or the network does."""
        if self._closed:
            raise RuntimeError("the prober is closed")
        pinned: paramiko.PKey | None = None
        if pinned_public_key:
            try:
                pinned = parse_public_key(pinned_public_key)
            except ValueError as exc:
                return ProbeResult(
                    address, ProbeOutcome.HOST_KEY_UNKNOWN, detail=f"recorded host key: {exc}"
                )
        elif self.config.host_key_policy is HostKeyPolicy.PINNED:
            return ProbeResult(
                address,
                ProbeOutcome.HOST_KEY_UNKNOWN,
                detail="no host key is recorded for this server and SSH_HOST_KEY_POLICY=pinned",
            )
        loop = asyncio.get_running_loop()
        await self._slots.acquire()
        attempt = _Attempt(address, pinned)
        answer: asyncio.Future[ProbeResult] = loop.create_future()
        started = time.monotonic()

        def settle(done: concurrent.futures.Future[ProbeResult]) -> None:
            self._slots.release()
            self._attempts.discard(attempt)
            if not answer.done():
                try:
                    answer.set_result(done.result())
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
                    answer.set_exception(exc)

        def on_done(done: concurrent.futures.Future[ProbeResult]) -> None:
            # RuntimeError: the loop is gone, nobody waits for this answer any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, done)

        try:
            work = self._pool.submit(self._probe_sync, attempt, started)
        except BaseException:
            self._slots.release()
            raise
        self._attempts.add(attempt)
        work.add_done_callback(on_done)
        try:
            async with asyncio.timeout(self.config.deadline):
                return await asyncio.shield(answer)
        except TimeoutError:
            stage = attempt.stage
            attempt.abort()
            result = ProbeResult(
                address,
                ProbeOutcome.TIMEOUT,
                elapsed_seconds=time.monotonic() - started,
                detail=f"hard deadline of {self.config.deadline:g}s reached during {stage}",
            )
            log.debug("ssh probe %s: %s (%s)", address, result.outcome, result.detail)
            return result
        except asyncio.CancelledError:
            attempt.abort()
            raise

    async def probe_many(
        self, targets: Iterable[tuple[str, str | None]], concurrency: int | None = None
    ) -> list[ProbeResult]:
        """Probe every `(address, pinned_public_key)`, at most `concurrency` at once (capped at
        `max_workers`); results in the order of `targets`."""
        limit = min(concurrency or self.config.max_workers, self.config.max_workers)
        if limit < 1:
            raise ValueError("concurrency must be at least 1")
        gate = asyncio.Semaphore(limit)

        async def one(address: str, key: str | None) -> ProbeResult:
            async with gate:
                return await self.probe(address, key)

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(address, key)) for address, key in targets]
        return [task.result() for task in tasks]

    async def close(self) -> None:
        """Cut off probes still running and release the pool. Workers still in a TCP connect
        end at their connect timeout; nothing waits for them."""
        self._closed = True
        for attempt in list(self._attempts):
            attempt.abort()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # The worker side: plain blocking paramiko calls, each bounded by its stage's timeout.

    def _probe_sync(self, attempt: _Attempt, started: float) -> ProbeResult:
        host_key: str | None = None
        try:
            report, host_key = self._run(attempt)
        except _Failed as failure:
            outcome, detail, host_key = failure.outcome, failure.detail, failure.host_key
            result = ProbeResult(
                attempt.address,
                outcome,
                elapsed_seconds=time.monotonic() - started,
                detail=detail,
                host_key=host_key,
            )
        except _CutOff:
            result = ProbeResult(
                attempt.address,
                ProbeOutcome.TIMEOUT,
                elapsed_seconds=time.monotonic() - started,
                detail=f"cut off during {attempt.stage}",
            )
        except Exception as exc:  # noqa: BLE001 - one odd host must not fail a whole reconcile
            result = ProbeResult(
                attempt.address,
                ProbeOutcome.PROTOCOL_ERROR,
                elapsed_seconds=time.monotonic() - started,
                detail=f"unexpected during {attempt.stage}: {_describe(exc)}",
                host_key=host_key,
            )
        else:
            result = ProbeResult(
                attempt.address,
                ProbeOutcome.OK,
                setup_complete=report.setup_complete,
                setup_failed_reason=report.setup_failed_reason,
                run_complete_exit_code=report.run_complete_exit_code,
                runner_alive=report.runner_alive,
                elapsed_seconds=time.monotonic() - started,
                detail=report.basis,
                host_key=host_key,
            )
        log.debug(
            "ssh probe %s: %s in %.3fs (%s)",
            attempt.address,
            result.outcome,
            result.elapsed_seconds,
            result.detail,
        )
        return result

    def _run(self, attempt: _Attempt) -> tuple[SentinelReport, str]:
        cfg = self.config
        attempt.enter("TCP connect")
        sock = self._connect(attempt)
        transport: paramiko.Transport | None = None
        try:
            attempt.enter("SSH banner")
            transport = paramiko.Transport(sock)
            attempt.attach(sock, transport)
            transport.set_log_channel(PARAMIKO_LOG_CHANNEL)
            transport.banner_timeout = cfg.banner_timeout
            # paramiko's own limit on banner + key exchange (an EOFError when it fires) stays
            # behind ours, so a stalled key exchange reads as a timeout, not as a closed peer.
            transport.handshake_timeout = 2 * cfg.banner_timeout + 1
            transport.auth_timeout = cfg.auth_timeout
            transport.channel_timeout = cfg.command_timeout
            if attempt.pinned is not None:
                _prefer_key_type(transport, attempt.pinned.get_name())
            presented = self._handshake(attempt, transport)
            self._check_host_key(attempt, presented)
            host_key = f"{presented.get_name()} {presented.get_base64()}"
            self._authenticate(attempt, transport, host_key)
            report = self._command_report(attempt, transport, host_key)
            return report, host_key
        finally:
            if transport is not None:
                transport.close()
            sock.close()

    def _connect(self, attempt: _Attempt) -> socket.socket:
        cfg = self.config
        try:
            infos = socket.getaddrinfo(
                attempt.address, cfg.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (socket.gaierror, UnicodeError) as exc:
            raise _Failed(ProbeOutcome.UNREACHABLE, f"cannot resolve the address: {exc}") from None
        family, kind, proto, _, sockaddr = infos[0]
        sock = _ProbeSocket(family, kind, proto)
        try:
            attempt.attach(sock)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(cfg.connect_timeout)
            sock.connect(sockaddr)
        except _CutOff:
            sock.close()
            raise
        except TimeoutError:
            sock.close()
            if attempt.cut_off.is_set():
                raise _CutOff from None
            raise _Failed(
                ProbeOutcome.TIMEOUT, f"TCP connect timed out after {cfg.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            sock.close()
            if attempt.cut_off.is_set():
                raise _CutOff from None
            name = errno.errorcode.get(exc.errno or 0, "error")
            raise _Failed(
                ProbeOutcome.UNREACHABLE, f"TCP connect failed: {name} ({exc.strerror})"
            ) from None
        return sock

    def _handshake(self, attempt: _Attempt, transport: paramiko.Transport) -> paramiko.PKey:
        """Banner, then key exchange, each within banner_timeout; the server's host key."""
        cfg = self.config
        done = threading.Event()
        transport.start_client(event=done)
        # paramiko reads the banner first; `remote_version` is set once it has.
        banner_by = time.monotonic() + cfg.banner_timeout
        while not done.is_set() and not transport.remote_version and transport.is_active():
            remaining = banner_by - time.monotonic()
            if remaining <= 0:
                break
            done.wait(min(remaining, 0.05))
        if attempt.cut_off.is_set():
            raise _CutOff
        if not transport.remote_version:
            if done.is_set() or not transport.is_active():
                error = transport.get_exception()
                if error is not None and "protocol banner" not in str(error):
                    raise _classify_handshake_error(error)
                raise _Failed(ProbeOutcome.NO_BANNER, "the connection closed before a banner")
            raise _Failed(
                ProbeOutcome.NO_BANNER,
                f"no SSH banner within {cfg.banner_timeout:g}s of the TCP connect",
            )
        attempt.enter("SSH key exchange")
        if not done.wait(cfg.banner_timeout):
            if attempt.cut_off.is_set():
                raise _CutOff
            raise _Failed(
                ProbeOutcome.TIMEOUT, f"key exchange not done within {cfg.banner_timeout:g}s"
            )
        if attempt.cut_off.is_set():
            raise _CutOff
        if not transport.is_active():
            error = transport.get_exception()
            raise _classify_handshake_error(error)
        return transport.get_remote_server_key()

    def _check_host_key(self, attempt: _Attempt, presented: paramiko.PKey) -> None:
        pinned = attempt.pinned
        if pinned is None:
            return  # accept-new: the caller records `ProbeResult.host_key`
        if presented.get_name() != pinned.get_name() or presented.asbytes() != pinned.asbytes():
            raise _Failed(
                ProbeOutcome.HOST_KEY_MISMATCH,
                f"the server presented {presented.get_name()} {fingerprint(presented)}, "
                f"the recorded key is {pinned.get_name()} {fingerprint(pinned)}",
                host_key=f"{presented.get_name()} {presented.get_base64()}",
            )

    def _authenticate(self, attempt: _Attempt, transport: paramiko.Transport, key: str) -> None:
        cfg = self.config
        attempt.enter("authentication")
        try:
            remaining = transport.auth_publickey(cfg.user, self._pkey)
        except paramiko.BadAuthenticationType as exc:
            raise _Failed(
                ProbeOutcome.AUTH_FAILED,
                f"the server does not take public keys (allowed: {','.join(exc.allowed_types)})",
                key,
            ) from None
        except paramiko.AuthenticationException as exc:
            if attempt.cut_off.is_set():
                raise _CutOff from None
            text = str(exc)
            if "timeout" in text.lower():
                raise _Failed(
                    ProbeOutcome.TIMEOUT,
                    f"authentication not answered within {cfg.auth_timeout:g}s",
                    key,
                ) from None
            if "transport shut down" in text or "EOF" in text:
                raise _Failed(
                    ProbeOutcome.PROTOCOL_ERROR, "the server closed during authentication", key
                ) from None
            raise _Failed(
                ProbeOutcome.AUTH_FAILED, f"the server refused our key for user {cfg.user}", key
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if attempt.cut_off.is_set():
                raise _CutOff from None
            raise _Failed(
                ProbeOutcome.PROTOCOL_ERROR, f"authentication: {_describe(exc)}", key
            ) from None
        if remaining or not transport.is_authenticated():
            raise _Failed(
                ProbeOutcome.AUTH_FAILED,
                f"the server wants more than a public key ({','.join(remaining or [])})",
                key,
            )

    def _command_report(
        self, attempt: _Attempt, transport: paramiko.Transport, key: str
    ) -> SentinelReport:
        cfg = self.config
        attempt.enter("the command")
        until = time.monotonic() + cfg.command_timeout
        try:
            channel = transport.open_session(timeout=cfg.command_timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if attempt.cut_off.is_set():
                raise _CutOff from None
            if "Timeout" in str(exc):
                raise _Failed(
                    ProbeOutcome.TIMEOUT,
                    f"no session channel within {cfg.command_timeout:g}s",
                    key,
                ) from None
            raise _Failed(
                ProbeOutcome.COMMAND_FAILED, f"opening a session: {_describe(exc)}", key
            ) from None
        try:
            out, err, status = self._run_command(attempt, channel, until, key)
        finally:
            channel.close()
        if status != 0:
            raise _Failed(
                ProbeOutcome.COMMAND_FAILED,
                f"the command exited with status {status}" + _stderr_hint(err),
                key,
            )
        try:
            return parse_report(out.decode("utf-8", errors="replace"))
        except ReportError as exc:
            raise _Failed(
                ProbeOutcome.COMMAND_FAILED, f"unusable report: {exc}" + _stderr_hint(err), key
            ) from None

    def _run_command(
        self, attempt: _Attempt, channel: paramiko.Channel, until: float, key: str
    ) -> tuple[bytes, bytes, int]:
        cfg = self.config

        def timed_out() -> _Failed:
            return _Failed(
                ProbeOutcome.TIMEOUT,
                f"the command did not finish within {cfg.command_timeout:g}s",
                key,
            )

        err = bytearray()
        try:
            channel.settimeout(max(until - time.monotonic(), 0.001))
            channel.exec_command(self._command)
            out = self._read_output(attempt, channel, until, timed_out, key)
            while channel.recv_stderr_ready() and len(err) < MAX_STDERR_BYTES:
                err += channel.recv_stderr(MAX_STDERR_BYTES)
            if not channel.status_event.wait(max(until - time.monotonic(), 0)):
                raise timed_out()
        except TimeoutError:
            if attempt.cut_off.is_set():
                raise _CutOff from None
            raise timed_out() from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if attempt.cut_off.is_set():
                raise _CutOff from None
            raise _Failed(
                ProbeOutcome.COMMAND_FAILED, f"the command: {_describe(exc)}", key
            ) from None
        if attempt.cut_off.is_set():
            # After a cut-off paramiko returns empty output and status -1: never an answer.
            raise _CutOff
        if channel.closed and not channel.exit_status_ready():
            raise _Failed(ProbeOutcome.COMMAND_FAILED, "the channel closed without a status", key)
        return out, bytes(err), channel.recv_exit_status()

    @staticmethod
    def _read_output(
        attempt: _Attempt,
        channel: paramiko.Channel,
        until: float,
        timed_out: Callable[[], _Failed],
        key: str,
    ) -> bytes:
        out = bytearray()
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0:
                raise timed_out()
            channel.settimeout(remaining)
            chunk = channel.recv(4096)
            if attempt.cut_off.is_set():
                raise _CutOff
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > MAX_REPORT_BYTES:
                raise _Failed(ProbeOutcome.COMMAND_FAILED, "the output is too long", key)


def _prefer_key_type(transport: paramiko.Transport, key_type: str) -> None:
    """Offer only host-key algorithms of the recorded key's type, so a server that also has
    other keys is checked against the recorded one (and one without it fails at once)."""
    options = transport.get_security_options()
    if key_type == "ssh-rsa":
        matching = [a for a in options.key_types if a in ("rsa-sha2-512", "rsa-sha2-256", key_type)]
    else:
        matching = [a for a in options.key_types if a == key_type]
    if matching:
        options.key_types = matching


def _classify_handshake_error(error: BaseException | None) -> _Failed:
    if error is None:
        return _Failed(ProbeOutcome.PROTOCOL_ERROR, "the key exchange failed")
    text = str(error)
    if "no acceptable host key" in text:
        return _Failed(
            ProbeOutcome.HOST_KEY_MISMATCH,
            "the server has no host key of the recorded key's type",
        )
    if isinstance(error, EOFError):
        return _Failed(ProbeOutcome.PROTOCOL_ERROR, "the server closed during the key exchange")
    return _Failed(ProbeOutcome.PROTOCOL_ERROR, f"key exchange: {_describe(error)}")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _stderr_hint(err: bytes) -> str:
    text = err.decode("utf-8", errors="replace").strip()
    return f"; stderr: {text[:200]}" if text else ""


__all__ = [
    "PARAMIKO_LOG_CHANNEL",
    "SSHProbeConfig",
    "SSHProbeConfigError",
    "SSHProber",
    "fingerprint",
    "parse_public_key",
    "public_key_of",
]
