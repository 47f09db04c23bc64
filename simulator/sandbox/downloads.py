"""A tiny HTTP server on 127.0.0.1 that serves the stub runner tarball to sandbox VMs.

Every path ending in `.tar.gz` answers the tarball (so RUNNER_DOWNLOAD_URL may keep the real
URL's `{version}` and `{arch}` placeholders); anything else is 404. Requests are counted, so a
test can see that the bootstrap really downloaded the runner.
"""

from __future__ import annotations

import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from simulator.sandbox.runner_stub import RunnerTarball

TARBALL_PATH = "/actions-runner/actions-runner-linux-{arch}-{version}.tar.gz"


class DownloadServer:
    def __init__(self, tarball: RunnerTarball, host: str = "127.0.0.1") -> None:
        self.tarball = tarball
        self.downloads: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not self.path.split("?", 1)[0].endswith(".tar.gz"):
                    self.send_error(HTTPStatus.NOT_FOUND)
                    return
                with server._lock:
                    server.downloads.append(self.path)
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(server.tarball.data)))
                self.end_headers()
                self.wfile.write(server.tarball.data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the request list is the record

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="sandbox-downloads", daemon=True
        )

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
