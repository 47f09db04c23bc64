"""An ML2 mechanism driver that binds every port on any host and marks it ACTIVE.

The test stack has no Neutron agents and no dataplane: nothing is plugged and no packet is ever
sent. Nova only needs its ports bound (otherwise PortBindingFailed). Neutron's own ``test``
driver binds only hosts with special names and then fails its self-checks.
"""

from __future__ import annotations

from typing import Any

from neutron_lib import constants
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api


class BindAnyMechanismDriver(api.MechanismDriver):  # type: ignore[misc]
    def initialize(self) -> None:
        pass

    def bind_port(self, context: Any) -> None:
        for segment in context.segments_to_bind:
            context.set_binding(
                segment[api.ID],
                portbindings.VIF_TYPE_OVS,
                {portbindings.CAP_PORT_FILTER: False},
                status=constants.PORT_STATUS_ACTIVE,
            )
            return
