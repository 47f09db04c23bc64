"""A small SSH server (paramiko) for light VMs: public-key login, one command per channel.

A light VM has no namespaces and no OpenSSH sshd of its own (the machine forbids them, or the
user is not root), so this server stands in for the VM's sshd on the VM's loopback address. It
offers the VM's host key (the one the bootstrap's user_data carries, as cloud-init installs it
before sshd starts) and asks `authorized(user)` for that user's authorized keys at each login,
as sshd reads `~user/.ssh/authorized_keys`: root is refused, as with `PermitRootLogin no`.

It honours what an `authorized_keys` entry of the bootstrap says: a forced command (`command=`)
runs instead of whatever the client asked (its exec, or a shell request), and `restrict` (and
everything else) gets no terminal, no forwarding, no subsystem: this server offers none of
them to any key. Each command runs through `run_command` (the guest decides how a command runs
in its VM), returning its output and exit status.

The only module of the simulator that imports paramiko.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import re
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

log = logging.getLogger("simulator.sandbox.sshd")
# paramiko logs every refused or cut-off handshake with a traceback; the probe tests cause many.
_PARAMIKO_LOG = "simulator.sandbox.sshd.paramiko"
logging.getLogger(_PARAMIKO_LOG).setLevel(logging.CRITICAL)

# How long a client may take for the handshake, the login and opening its channel.
HANDSHAKE_TIMEOUT = 30.0


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class AuthorizedKey:
    """One `authorized_keys` entry: the key, and the command it is forced to run (None: any)."""

    key: paramiko.PKey
    forced_command: str | None = None


# The command run (the forced one when the key has one) and whether it was forced.
CommandRunner = Callable[[str, bool], CommandResult]
# A user's authorized keys, read at each login (empty: the user cannot log in).
AuthorizedKeys = Callable[[str], list[AuthorizedKey]]


def parse_authorized_keys(text: str) -> list[AuthorizedKey]:
    """The entries of an `authorized_keys` file that this server can honour. An entry with an
    option it does not know is left out (it could not be honoured, so it grants nothing)."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        options, rest = "", line
        if not line.startswith(("ssh-", "ecdsa-")):
            found = re.match(r'((?:[A-Za-z0-9-]+(?:="(?:[^"\\]|\\.)*")?,?)+)\s+(.*)', line)
            if found is None:
                continue
            options, rest = found.group(1), found.group(2)
        forced: str | None = None
        known = True
        for name, value in re.findall(r'([A-Za-z0-9-]+)(?:="((?:[^"\\]|\\.)*)")?', options):
            if name == "command":
                forced = value.replace('\\"', '"')
            elif name not in (
                "restrict",
                "no-pty",
                "no-port-forwarding",
                "no-agent-forwarding",
                "no-X11-forwarding",
                "no-user-rc",
            ):
                known = False
        parts = rest.split()
        if not known or len(parts) < 2:
            continue
        with contextlib.suppress(Exception):
            entries.append(AuthorizedKey(_public_key(" ".join(parts[:2])), forced))
    return entries


class _Interface(paramiko.ServerInterface):
    def __init__(self, authorized: AuthorizedKeys) -> None:
        self._authorized = authorized
        self.forced_command: str | None = None
        self.command: bytes | None = None
        self.command_ready = threading.Event()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == "root":
            return AUTH_FAILED
        for entry in self._authorized(username):
            if entry.key == key:  # the first matching entry decides, as in sshd
                self.forced_command = entry.forced_command
                return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.command is not None:
            return False  # one command per connection is all a probe sends
        self.command = command
        self.command_ready.set()
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        # No shells here; a key with a forced command runs it for a shell request, as in sshd.
        if self.forced_command is None or self.command is not None:
            return False
        self.command = b""
        self.command_ready.set()
        return True


class GuestSSHServer:
    """Listens on `address:port` until `stop()`. `start()` raises OSError when the address
    cannot be bound (in use, or not a local address)."""

    def __init__(
        self,
        address: str,
        port: int,
        host_key_private: str,
        authorized: AuthorizedKeys,
        run_command: CommandRunner,
    ) -> None:
        self.address = address
        self.port = port
        self._host_key = paramiko.Ed25519Key.from_private_key(io.StringIO(host_key_private))
        self._authorized = authorized
        self._run_command = run_command
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None
        self._transports: set[paramiko.Transport] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            # A reconcile probes hundreds of VMs at once; only the few on one VM queue here.
            request_queue_size = 64

        self._server = Server((self.address, self.port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"guest-sshd-{self.address}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut every open connection (the VM lost its power)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            with contextlib.suppress(Exception):
                transport.close()

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        transport = paramiko.Transport(sock)
        transport.set_log_channel(_PARAMIKO_LOG)
        transport.add_server_key(self._host_key)
        with self._lock:
            self._transports.add(transport)
        try:
            self._session(transport)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            log.debug("ssh connection on %s ended: %s", self.address, exc)
        finally:
            with self._lock:
                self._transports.discard(transport)
            transport.close()

    def _session(self, transport: paramiko.Transport) -> None:
        interface = _Interface(self._authorized)
        transport.start_server(server=interface)
        channel = transport.accept(timeout=HANDSHAKE_TIMEOUT)
        if channel is None:
            return
        with channel:
            if not interface.command_ready.wait(HANDSHAKE_TIMEOUT) or interface.command is None:
                return
            forced = interface.forced_command
            command = interface.command.decode("utf-8", "replace") if forced is None else forced
            result = self._run_command(command, forced is not None)
            if result.stdout:
                channel.sendall(result.stdout)
            if result.stderr:
                channel.sendall_stderr(result.stderr)
            channel.send_exit_status(result.exit_status)
            channel.shutdown_write()
        # The client hangs up once it has read the output and the exit status.
        transport.join(HANDSHAKE_TIMEOUT)


def _public_key(line: str) -> paramiko.PKey:
    parts = line.split()
    return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
