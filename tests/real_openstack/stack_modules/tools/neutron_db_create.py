"""Build Neutron's schema from its models on SQLite: neutron_db_create.py DATABASE_URL.

Neutron's alembic migrations cannot run on SQLite ("No support for ALTER of constraints in
SQLite dialect"), so the schema is created from the models, as Neutron's unit tests do; the
caller then runs ``neutron-db-manage ... stamp heads``.
"""

from __future__ import annotations

import sys

import neutron.db.migration.models.head  # noqa: F401  (imports every Neutron model)
import sqlalchemy
from neutron_lib.db import model_base


def main() -> None:
    engine = sqlalchemy.create_engine(sys.argv[1])
    model_base.BASEV2.metadata.create_all(engine)
    print(f"neutron schema: {len(model_base.BASEV2.metadata.tables)} tables")


if __name__ == "__main__":
    main()
