"""Make SQLite usable by several OpenStack processes at once.

Loaded into every Python process of the stack's venv by osk_sqlite_immediate.pth.

oslo.db switches off pysqlite's implicit transactions and emits its own plain (deferred)
``BEGIN``. A deferred transaction that reads and then writes fails at once with "database is
locked" when another process wrote in between: SQLite cannot busy-wait on a lock upgrade. So
this hook rewrites oslo.db's ``BEGIN`` into ``BEGIN IMMEDIATE`` (take the write lock up front)
and sets a 60 s busy timeout, so that processes queue instead of failing. It must rewrite the
statement rather than issue its own ``BEGIN IMMEDIATE``: that would clash with oslo.db's
("cannot start a transaction within a transaction").
"""

from __future__ import annotations

import sqlite3
from typing import Any

try:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
except ImportError:  # pip and other tools of the venv run without SQLAlchemy at first
    pass
else:

    @event.listens_for(Engine, "connect")
    def _busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute("PRAGMA busy_timeout = 60000")

    @event.listens_for(Engine, "before_cursor_execute", retval=True)
    def _begin_immediate(
        conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool
    ) -> tuple[str, Any]:
        if statement == "BEGIN" and conn.dialect.name == "sqlite":
            return "BEGIN IMMEDIATE", parameters
        return statement, parameters
