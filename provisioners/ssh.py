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
* The TCP connect runs on the event loop (at most `max_connections` sockets open at once); a
  connected probe then takes one of `max_workers` slots before its deadline's clock starts, so
  neither a hung host's connect nor queueing eats into another host's deadline.
* The SSH part runs on worker threads of this process, or (`worker_processes` > 0) on threads of
  worker processes that receive the connected socket and send back a plain `ProbeResult`. A
  worker process that dies or hangs never loses a VM's answer to a wrong one: its probes end
  `unreachable` (died) or `timeout` (the deadline), never `ok`.
* Key exchange, cipher and MAC are the cheapest both sides support (curve25519, AES-GCM: no
  per-packet HMAC in Python); the host key algorithm is the recorded key's type only.

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
import ipaddress
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from multiprocessing import reduction
from pathlib import Path

import paramiko
import paramiko.packet

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
    max_workers: int = 200  # SSH handshakes at once (after the TCP connect)
    port: int = 22
    # Worker processes for the SSH part (0: threads of this process); see docs/ssh-probe.md.
    worker_processes: int = 0
    # TCP connects in flight plus connected sockets waiting for a slot.
    max_connections: int = 1024

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "banner_timeout", "auth_timeout", "command_timeout"):
            if not getattr(self, name) > 0:
                raise SSHProbeConfigError(f"{name} must be positive")
        if not self.deadline > 0:
            raise SSHProbeConfigError("deadline must be positive")
        if not 1 <= self.max_workers <= 4096:
            raise SSHProbeConfigError("max_workers must be between 1 and 4096")
        if not 0 <= self.worker_processes <= 64:
            raise SSHProbeConfigError("worker_processes must be between 0 and 64")
        if not 1 <= self.max_connections <= 16384:
            raise SSHProbeConfigError("max_connections must be between 1 and 16384")
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


# What one read from the socket asks for, whatever paramiko asked: the rest waits in the socket
# object for paramiko's next read.
_READ_AHEAD = 16384


class _ProbeSocket(socket.socket):
    """A TCP socket that re-arms TCP_QUICKACK before every read (Linux only): without it the
    SSH handshake's write-write-read pattern waits out the peer's delayed ACK several times.

    Reads ahead: paramiko asks for a packet's first block, then for the rest, each by its exact
    size; one system call (and one re-arm) now serves whatever the peer has sent, often several
    packets, and paramiko's next reads take it from here."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._read_ahead = b""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self._read_ahead:
            data, self._read_ahead = self._read_ahead[:bufsize], self._read_ahead[bufsize:]
            return data
        if _QUICKACK is not None:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        if flags:
            return super().recv(bufsize, flags)
        data = super().recv(max(bufsize, _READ_AHEAD))
        if len(data) > bufsize:
            data, self._read_ahead = data[:bufsize], data[bufsize:]
        return data


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


class _ProbePacketizer(paramiko.packet.Packetizer):
    """paramiko's packetizer without its key-exchange timer: a thread started (and cancelled)
    for every handshake, to enforce a limit the probe's own stage timeouts and deadline already
    enforce sooner."""

    def start_handshake(self, timeout: float) -> None:
        pass


# paramiko's own preference lists (class attributes its type stubs leave out).
_PARAMIKO_PREFERRED: dict[str, tuple[str, ...]] = {
    name: tuple(vars(paramiko.Transport)[name])
    for name in ("_preferred_kex", "_preferred_ciphers", "_preferred_macs")
}


class _ProbeTransport(paramiko.Transport):
    """paramiko's transport with the cheapest algorithms first (both sides still negotiate: a
    server without them gets paramiko's usual ones). curve25519 is one X25519 exchange (the
    ML-KEM hybrid paramiko prefers costs more and OpenSSH before 9.9 lacks it); AES-GCM
    authenticates each packet inside the cipher, where HMAC modes compare every MAC byte by
    byte in Python (a fifth of a probe's client CPU)."""

    _preferred_kex = (
        "curve25519-sha256@libssh.org",
        *(k for k in _PARAMIKO_PREFERRED["_preferred_kex"] if k != "curve25519-sha256@libssh.org"),
    )
    _preferred_ciphers = (
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        *(
            c
            for c in _PARAMIKO_PREFERRED["_preferred_ciphers"]
            if c not in ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
        ),
    )
    _preferred_macs = (
        "hmac-sha2-256-etm@openssh.com",
        *(
            m
            for m in _PARAMIKO_PREFERRED["_preferred_macs"]
            if m != "hmac-sha2-256-etm@openssh.com"
        ),
    )

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self.packetizer.__class__ = _ProbePacketizer

    def _filter_algorithm(self, type_: str) -> tuple[str, ...]:
        # The probe disables no algorithm: the preference list as it is, not filtered again on
        # each of the sixteen times a handshake asks for it.
        preferred: tuple[str, ...] = getattr(self, f"_preferred_{type_}")
        return preferred

    def _log(self, level: int, msg: object, *args: object) -> None:
        # paramiko logs each step of every handshake (on a channel quiet by default).
        if self.logger.isEnabledFor(level):
            super()._log(level, msg, *args)  # type: ignore[misc]

    def _parse_debug(self, m: paramiko.Message) -> None:
        # OpenSSH sends one SSH_MSG_DEBUG per restriction of the probe key's entry; paramiko
        # escapes each byte by byte in Python only to log it at DEBUG on a quiet channel.
        if logging.getLogger(PARAMIKO_LOG_CHANNEL).isEnabledFor(logging.DEBUG):
            super()._parse_debug(m)  # type: ignore[misc]


class SSHProber:
    """Probes VMs over SSH. Create it in the event loop that will use it; `close()` it."""

    def __init__(self, config: SSHProbeConfig) -> None:
        self.config = config
        # Loaded here so a bad key fails at start; worker processes load it once each.
        self._stage = _SSHStage(config)
        # Its workers' names start with this (one prefix per prober, for tests and debugging).
        self.thread_name_prefix = f"ssh-probe-{next(_PROBER_NUMBERS)}"
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        if config.worker_processes == 0:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=config.max_workers, thread_name_prefix=self.thread_name_prefix
            )
        self._workers: list[_WorkerProcess] = []
        self._workers_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(config.max_workers)
        self._connections = asyncio.Semaphore(_connection_limit(config))
        self._attempts: set[_Attempt] = set()
        self._closed = False
        self._closing = asyncio.Event()  # set by close(): connects in flight give up

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes' pids (empty without worker processes)."""
        return [worker.pid for worker in self._workers]

    async def probe(self, address: str, pinned_public_key: str | None) -> ProbeResult:
        """Probe one VM. Never raises for anything the VM or the network does."""
        if self._closed:
            raise RuntimeError("the prober is closed")
        if pinned_public_key:
            try:
                parse_public_key(pinned_public_key)
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
        async with self._connections:
            connect_started = time.monotonic()
            connected = await self._connect(address)
            if isinstance(connected, ProbeResult):
                log.debug("ssh probe %s: %s (%s)", address, connected.outcome, connected.detail)
                return connected
            connect_seconds = time.monotonic() - connect_started
            # The deadline covers the connect and the SSH part, not the wait for a slot.
            budget = max(self.config.deadline - connect_seconds, 0.001)
            async with self._slots:
                result = await self._ssh(address, pinned_public_key or None, connected, budget)
        return replace(result, elapsed_seconds=result.elapsed_seconds + connect_seconds)

    async def _connect(self, address: str) -> socket.socket | ProbeResult:
        """The TCP connect on the event loop: a host that never answers holds a socket, not a
        worker."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        started = time.monotonic()

        def failed(outcome: ProbeOutcome, detail: str) -> ProbeResult:
            return ProbeResult(
                address, outcome, elapsed_seconds=time.monotonic() - started, detail=detail
            )

        try:
            # A VM's address is an IP literal: no resolver round trip through a thread.
            ip = ipaddress.ip_address(address)
        except ValueError:
            try:
                infos = await loop.getaddrinfo(
                    address, cfg.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
            except (socket.gaierror, UnicodeError) as exc:
                return failed(ProbeOutcome.UNREACHABLE, f"cannot resolve the address: {exc}")
            family, _, _, _, sockaddr = infos[0]
        else:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            sockaddr = (address, cfg.port)
        sock = _ProbeSocket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        connecting: asyncio.Future[None] | None = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            connecting = asyncio.ensure_future(loop.sock_connect(sock, sockaddr))
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                await asyncio.wait(
                    (connecting, closing),
                    timeout=min(cfg.connect_timeout, cfg.deadline),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                closing.cancel()
            if not connecting.done():
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
                if self._closing.is_set():
                    sock.close()
                    return failed(ProbeOutcome.TIMEOUT, "cut off during TCP connect")
                raise TimeoutError
            connecting.result()
        except TimeoutError:
            sock.close()
            if cfg.deadline < cfg.connect_timeout:
                return failed(
                    ProbeOutcome.TIMEOUT,
                    f"hard deadline of {cfg.deadline:g}s reached during TCP connect",
                )
            return failed(
                ProbeOutcome.TIMEOUT, f"TCP connect timed out after {cfg.connect_timeout:g}s"
            )
        except OSError as exc:
            sock.close()
            name = errno.errorcode.get(exc.errno or 0, "error")
            return failed(ProbeOutcome.UNREACHABLE, f"TCP connect failed: {name} ({exc.strerror})")
        except BaseException:
            if connecting is not None:
                connecting.cancel()
            sock.close()
            raise
        return sock

    async def _ssh(
        self, address: str, pinned: str | None, sock: socket.socket, budget: float
    ) -> ProbeResult:
        """The SSH part on a worker, within what the connect left of the hard deadline. Takes the
        socket: a worker thread of this process closes it when done (never this side while
        the thread may still read it); with worker processes each side closes its own copy."""
        started = time.monotonic()
        attempt: _Attempt | None = None
        own_copy = False
        worker = None if self._pool is not None else await self._worker()
        if self._closed:
            sock.close()
            return ProbeResult(address, ProbeOutcome.TIMEOUT, detail="cut off: the prober closed")
        try:
            if worker is None:
                assert self._pool is not None
                attempt = _Attempt(address, None if pinned is None else parse_public_key(pinned))
                attempt.attach(sock)
                submitted = self._pool.submit(self._stage.run, attempt, sock, started)

                def close_if_never_run(done: concurrent.futures.Future[ProbeResult]) -> None:
                    if done.cancelled():
                        sock.close()

                submitted.add_done_callback(close_if_never_run)
                work: asyncio.Future[ProbeResult] = asyncio.wrap_future(submitted)
                self._attempts.add(attempt)
                abort = attempt.abort
            else:
                own_copy = True
                work, abort = worker.submit(address, pinned, sock)
        except BaseException:
            sock.close()
            raise
        try:
            async with asyncio.timeout(budget):
                return await asyncio.shield(work)
        except TimeoutError:
            stage = attempt.stage if attempt is not None else "the SSH part"
            abort()
            result = ProbeResult(
                address,
                ProbeOutcome.TIMEOUT,
                elapsed_seconds=time.monotonic() - started,
                detail=f"hard deadline of {self.config.deadline:g}s reached during {stage}",
            )
            log.debug("ssh probe %s: %s (%s)", address, result.outcome, result.detail)
            return result
        except asyncio.CancelledError:
            abort()
            raise
        finally:
            if attempt is not None:
                self._attempts.discard(attempt)
            if own_copy:
                sock.close()

    async def _worker(self) -> _WorkerProcess | None:
        """The live worker process with the fewest probes in hand; dead ones are replaced.
        None: the prober is closed, or worker processes cannot start here, and the probes run
        on threads of this process instead (a pass must not fail for want of them)."""
        async with self._workers_lock:
            if self._closed or self._pool is not None:
                return None
            alive = [worker for worker in self._workers if worker.alive]
            missing = self.config.worker_processes - len(alive)
            if missing > 0:
                loop = asyncio.get_running_loop()
                try:
                    started = await loop.run_in_executor(
                        None, _WorkerProcess.start_many, missing, self.config, loop
                    )
                except SSHProbeConfigError as exc:
                    log.warning("%s; probing on threads of this process instead", exc)
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        max_workers=self.config.max_workers,
                        thread_name_prefix=self.thread_name_prefix,
                    )
                    return None
                alive += started
                for worker in self._workers:
                    if not worker.alive:
                        worker.stop()
                self._workers = alive
            return min(alive, key=lambda worker: len(worker.pending))

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
        """Cut off probes still running, release the pool and stop the worker processes."""
        self._closed = True
        self._closing.set()
        for attempt in list(self._attempts):
            attempt.abort()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        async with self._workers_lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop()


def _connection_limit(config: SSHProbeConfig) -> int:
    """`max_connections`, but at most half the descriptors this process may open (a systemd
    service gets 1,024 unless told otherwise): a connect that fails for want of a descriptor
    would read as an unreachable VM."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return config.max_connections
    return max(1, min(config.max_connections, max(config.max_workers, soft // 2)))


class _WorkerProcess:
    """One worker process and its pipe: probes go out as `(id, address, pinned key)` plus the
    connected socket's descriptor, plain `ProbeResult`s come back. A reader thread hands
    the answers to the event loop; when the pipe ends, every probe still in hand ends
    `unreachable` (never `ok`: nothing about those VMs is known)."""

    def __init__(
        self,
        process: subprocess.Popen[bytes] | None,
        pid: int,
        conn: multiprocessing.connection.Connection,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.process = process  # the first worker is our child; the others are its
        self.pid = pid
        self.conn = conn
        self.loop = loop
        self.alive = True
        self.pending: dict[int, tuple[asyncio.Future[ProbeResult], socket.socket]] = {}
        self._ids = itertools.count(1)
        self._reader = threading.Thread(
            target=self._read, name=f"ssh-probe-worker-{self.pid}", daemon=True
        )
        self._reader.start()

    @classmethod
    def start_many(
        cls, count: int, config: SSHProbeConfig, loop: asyncio.AbstractEventLoop
    ) -> list[_WorkerProcess]:
        """Start `count` workers (blocking: run it off the event loop). One fresh interpreter
        imports this module once and forks the others before it has any thread (this process
        has threads, so it never forks itself; and a plain interpreter, unlike
        multiprocessing's, never re-imports the caller's `__main__`)."""
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(count)]
        theirs = [pair[1].fileno() for pair in pairs]
        # The interpreter finds this very copy of the package first.
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
        try:
            process = subprocess.Popen(  # noqa: S603 (this interpreter, our own entry)
                [sys.executable, "-c", _WORKERS_ENTRY, *map(str, theirs)],
                pass_fds=theirs,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )
        finally:
            for _, their_end in pairs:
                their_end.close()
        conns = [multiprocessing.connection.Connection(ours.detach()) for ours, _ in pairs]
        workers = []
        try:
            for conn in conns:
                conn.send(config)
            for conn in conns:
                if not conn.poll(WORKER_START_TIMEOUT):
                    raise OSError(f"no worker process ready within {WORKER_START_TIMEOUT:g}s")
                pid = conn.recv()
                workers.append(cls(process if pid == process.pid else None, pid, conn, loop))
        except (OSError, EOFError) as exc:
            for conn in conns:
                conn.close()
            process.kill()
            process.wait()
            raise SSHProbeConfigError(
                f"cannot start the SSH probe's worker processes: {_describe(exc)}"
            ) from None
        return workers

    def submit(
        self, address: str, pinned: str | None, sock: socket.socket
    ) -> tuple[asyncio.Future[ProbeResult], Callable[[], None]]:
        answer: asyncio.Future[ProbeResult] = self.loop.create_future()
        request = next(self._ids)

        def abort() -> None:
            # The worker holds a copy of this socket: shutting it down ends its probe soon.
            self.pending.pop(request, None)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        if not self.alive:
            answer.set_result(_worker_gone(address, "the worker process has ended"))
            return answer, abort
        self.pending[request] = (answer, sock)
        try:
            self.conn.send((request, address, pinned))
            reduction.send_handle(self.conn, sock.fileno(), self.pid)
        except (OSError, ValueError) as exc:
            self.pending.pop(request, None)
            self._gone(f"cannot reach the worker process: {_describe(exc)}")
            if not answer.done():
                answer.set_result(_worker_gone(address, "the worker process has ended"))
        return answer, abort

    def _read(self) -> None:
        while True:
            try:
                request, result = self.conn.recv()
            except (EOFError, OSError, ValueError, TypeError):
                break
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self._deliver, request, result)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._gone, "the worker process ended")

    def _deliver(self, request: int, result: ProbeResult) -> None:
        entry = self.pending.pop(request, None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(result)

    def _gone(self, why: str) -> None:
        self.alive = False
        code = self.process.poll() if self.process is not None else None
        detail = why if code is None else f"{why} (exit code {code})"
        pending, self.pending = self.pending, {}
        for answer, sock in pending.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            if not answer.done():
                answer.set_result(_worker_gone("", detail))

    def stop(self) -> None:
        """End the worker: its pipe closes (it exits at once), and SIGTERM for one that hangs."""
        self.alive = False
        with contextlib.suppress(OSError):
            self.conn.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=1)


def _worker_gone(address: str, detail: str) -> ProbeResult:
    return ProbeResult(address, ProbeOutcome.UNREACHABLE, detail=detail)


WORKER_START_TIMEOUT = 30.0
_WORKERS_ENTRY = "import sys, provisioners.ssh as m; m._workers_main(sys.argv[1:])"


def _workers_main(descriptors: list[str]) -> None:
    """The worker interpreter: fork one sibling per extra pipe (no thread exists yet), then
    each serves its own pipe."""
    fds = [int(fd) for fd in descriptors]
    mine = fds[0]
    for fd in fds[1:]:
        if os.fork() == 0:
            mine = fd
            break
    else:
        # The first worker is the parent of the others: the kernel reaps them for it.
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for fd in fds:
        if fd != mine:
            os.close(fd)
    _worker_main(multiprocessing.connection.Connection(mine))


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    """A worker process: probes arrive with their connected socket, each runs on a thread of
    this process, answers go back as plain data. Ends when the listener closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the listener decides when we stop
    config: SSHProbeConfig = conn.recv()
    stage = _SSHStage(config)
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=config.max_workers, thread_name_prefix="ssh-probe"
    )
    sending = threading.Lock()
    conn.send(os.getpid())

    def one(request: int, address: str, pinned: str | None, fd: int) -> None:
        sock = _ProbeSocket(fileno=fd)
        try:
            key = None if pinned is None else parse_public_key(pinned)
            result = stage.run(_Attempt(address, key), sock, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - answered, never dropped
            result = ProbeResult(
                address, ProbeOutcome.PROTOCOL_ERROR, detail=f"worker: {_describe(exc)}"
            )
        finally:
            sock.close()
        with sending, contextlib.suppress(OSError, ValueError):
            conn.send((request, result))

    while True:
        try:
            request, address, pinned = conn.recv()
            fd = reduction.recv_handle(conn)
        except (EOFError, OSError, ValueError):
            break
        pool.submit(one, request, address, pinned, fd)
    os._exit(0)  # probes still running are cut off with the process


class _SSHStage:
    """The SSH part of a probe on a connected socket: plain blocking paramiko calls, each
    bounded by its stage's timeout. Runs on a worker thread (of this process or a worker's)."""

    def __init__(self, config: SSHProbeConfig) -> None:
        self.config = config
        self._pkey = _load_private_key(config.private_key_path)
        # A VM whose bootstrap installed the probe's entry runs its forced command instead;
        # one without it (made before that entry existed) runs this.
        self._command = remote_command(config.sentinel_dir)

    def run(self, attempt: _Attempt, sock: socket.socket, started: float) -> ProbeResult:
        host_key: str | None = None
        try:
            report, host_key = self._run(attempt, sock)
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

    def _run(self, attempt: _Attempt, sock: socket.socket) -> tuple[SentinelReport, str]:
        cfg = self.config
        sock.settimeout(cfg.banner_timeout)
        transport: paramiko.Transport | None = None
        try:
            attempt.enter("SSH banner")
            transport = _ProbeTransport(sock)
            attempt.attach(sock, transport)
            transport.set_log_channel(PARAMIKO_LOG_CHANNEL)
            transport.banner_timeout = cfg.banner_timeout
            # No limit of paramiko's own on the key exchange (_ProbePacketizer): ours end a
            # stalled one as a timeout, not as a closed peer.
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
