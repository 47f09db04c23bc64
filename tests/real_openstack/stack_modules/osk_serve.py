"""Serve one OpenStack WSGI application with gunicorn on 127.0.0.1.

Usage: python -m osk_serve NAME MODULE:ATTR PORT [WORKERS] [THREADS]

None of the services ships a standalone API server any more, so every API is a WSGI app.
``sys.argv`` is reset to ``[NAME]`` before any OpenStack module is imported: Keystone's and
Neutron's WSGI entry points parse it with oslo.config and every worker dies on gunicorn's own
arguments otherwise.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from gunicorn.app.base import BaseApplication


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: dict[str, Any], target: str) -> None:
        self._settings = settings
        self._target = target
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        module_name, _, attr = self._target.partition(":")
        return getattr(importlib.import_module(module_name), attr)


def main() -> None:
    args = sys.argv[1:]
    if not 3 <= len(args) <= 5:
        sys.exit(__doc__)
    name, target, port = args[0], args[1], int(args[2])
    workers = int(args[3]) if len(args) > 3 else 1
    threads = int(args[4]) if len(args) > 4 else 4
    sys.argv = [name]
    scratch = os.environ["REAL_OPENSTACK_DIR"]
    settings: dict[str, Any] = {
        "bind": f"127.0.0.1:{port}",
        "workers": workers,
        "threads": threads,
        "timeout": 120,
        # gunicorn 26 otherwise opens a control socket in the home folder.
        "control_socket_disable": True,
        "proc_name": name,
        "accesslog": f"{scratch}/log/{name}-access.log",
    }
    _Server(settings, target).run()


if __name__ == "__main__":
    main()
