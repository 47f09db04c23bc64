"""What every fleet of simulated VMs shares (simulator.fleet): reading a server's user_data and
the record each fleet keeps of a VM. The fleets' behaviour is tested per fleet
(tests/simulator_fleet, tests/simulator_sandbox)."""

from __future__ import annotations

import base64

from simulator.fleet import Behaviour, VmRecord, VmView, user_data_texts


def test_user_data_is_read_as_it_is_and_as_the_base64_it_may_be() -> None:
    script = "#!/bin/bash\nJIT_CONFIG='abc='\n"
    encoded = base64.b64encode(script.encode()).decode()
    assert user_data_texts(script) == [script]
    assert user_data_texts(encoded) == [encoded, script]
    # Base64 of bytes that are no UTF-8 text is shown as sent: nothing more to read.
    garbage = base64.b64encode(b"\xff\xfe\xfd").decode()
    assert user_data_texts(garbage) == [garbage]
    assert user_data_texts(None) == []
    assert user_data_texts("") == []


def test_a_vm_record_shows_callers_a_snapshot_of_itself() -> None:
    record = VmRecord("id-1", "runner-1", Behaviour("crash", crash_after=1.5))
    first = record.view()
    assert first == VmView(
        "id-1", "runner-1", "building", Behaviour("crash", crash_after=1.5), None, None, None, None
    )
    record.phase, record.runner_id, record.job_id = "busy", 7, 1001
    assert first.phase == "building"  # a snapshot, not a live view
    assert record.view().phase == "busy"
    assert (record.view().runner_id, record.view().job_id) == (7, 1001)
