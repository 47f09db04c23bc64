"""A runner mirror on 127.0.0.1: the stub runner tarball of any pinned version, for sandbox VMs.

A path ending in `actions-runner-linux-<arch>-<version>.tar.gz` answers the stub built for that
version (`simulator.runner_stub`), so RUNNER_DOWNLOAD_URL may keep the real URL's `{version}` and
`{arch}` placeholders and the runner reports the version it was downloaded as; anything else is
404. Requests are counted, so a test can see that the bootstrap really downloaded the runner.
Without a mirror, VMs download the runner from the simulated GitHub's release URLs instead.
"""

from __future__ import annotations

import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from simulator.runner_stub import RunnerTarball, build_runner_tarball

TARBALL_PATH = "/actions-runner/actions-runner-linux-{arch}-{version}.tar.gz"
_TARBALL = re.compile(r"actions-runner-linux-[A-Za-z0-9_]+-(?P<version>\d+\.\d+\.\d+)\.tar\.gz$")


class DownloadServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.downloads: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                found = _TARBALL.search(self.path.split("?", 1)[0])
                if found is None:
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                tarball = server.tarball(found.group("version"))
                with server._lock:
                    server.downloads.append(self.path)
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(tarball.data)))
                self.end_headers()
                self.wfile.write(tarball.data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the request list is the record

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="sandbox-downloads", daemon=True
        )

    def tarball(self, version: str) -> RunnerTarball:
        """The stub runner this mirror serves for `version` (its sha256 is what RUNNER_SHA256
        must say)."""
        return build_runner_tarball(version)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def runner_url(self) -> str:
        """RUNNER_DOWNLOAD_URL for the listener: `{version}` and `{arch}` are kept."""
        return self.url + TARBALL_PATH

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
