"""What a bench at fleet scale reads from the simulated cloud: request counts beyond the
request log, and brief server listings with each user_data only until it was seen."""

from __future__ import annotations

from collections import Counter

import pytest
from openstack import connection

from simulator.openstack.control import CloudControl
from tests.simulator_openstack.helpers import USER_DATA, USER_DATA_TEXT, Ids, create

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack.*"),
]


def test_request_counts_count_every_request_by_endpoint_and_clear_with_the_log(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    create(conn, ids, "counted-1")
    create(conn, ids, "counted-2")
    list(conn.compute.servers())
    counts = control.request_counts()
    logged = Counter(record.endpoint for record in control.requests())
    assert counts["by_endpoint"] == dict(logged)
    assert counts["by_endpoint"]["compute.servers.create"] == 2
    assert counts["total"] == sum(logged.values())
    control.clear_requests()
    assert control.request_counts() == {"total": 0, "by_endpoint": {}}


def test_server_briefs_carry_user_data_only_after_the_sequence_given(
    conn: connection.Connection, ids: Ids, control: CloudControl
) -> None:
    create(conn, ids, "brief-1", user_data=USER_DATA)
    create(conn, ids, "brief-2", user_data=USER_DATA)
    first, second = control.server_briefs()
    assert [first["name"], second["name"]] == ["brief-1", "brief-2"]
    assert first["user_data"] == second["user_data"] == USER_DATA_TEXT
    assert set(first) == {"id", "name", "status", "task_state", "deleting", "sequence", "user_data"}
    later = control.server_briefs(user_data_after=first["sequence"])
    assert "user_data" not in later[0]
    assert later[1]["user_data"] == USER_DATA_TEXT
    assert control.server_briefs(user_data_after=second["sequence"])[1].keys() == (
        first.keys() - {"user_data"}
    )
