"""Neutron's WSGI application, with every ORM mapper configured before the first request.

``GET /v2.0/ports`` refers to backrefs such as ``Port.port_forwardings`` that exist only once
all models are imported and the mappers are configured; without this it fails with
``AttributeError: type object 'Port' has no attribute 'port_forwardings'``.
"""

from __future__ import annotations

import neutron.db.migration.models.head  # noqa: F401  (imports every Neutron model)
from neutron.wsgi.api import application
from sqlalchemy import orm

orm.configure_mappers()

__all__ = ["application"]
