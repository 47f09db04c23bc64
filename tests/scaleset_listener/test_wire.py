import json
from datetime import UTC, datetime

from scaleset_listener.wire import (
    JobAvailable,
    JobCompleted,
    JobStarted,
    MessageEnvelope,
    Statistics,
    UnknownJobMessage,
    parse_job_messages,
)


def test_envelope_keys_match_in_any_case_and_unknown_fields_are_ignored() -> None:
    envelope = MessageEnvelope.model_validate(
        {
            "MESSAGEID": 100000171,
            "messagetype": "RunnerScaleSetJobMessages",
            "Body": "",
            "Statistics": {"TotalAssignedJobs": 3, "totalRunningJobs": 1},
            "somethingNew": {"x": 1},
        }
    )
    assert envelope.message_id == 100000171
    assert envelope.statistics == Statistics(total_assigned_jobs=3, total_running_jobs=1)


def test_job_messages_are_a_tagged_union_and_unknown_types_are_kept_for_logging() -> None:
    body = json.dumps(
        [
            {"messageType": "JobAvailable", "runnerRequestId": 1041, "acquireJobUrl": "u"},
            {"messageType": "JobStarted", "runnerId": 77, "runnerName": "r-1", "jobId": "a"},
            {"messageType": "JobCompleted", "runnerName": "", "runnerId": 0, "result": "canceled"},
            {"messageType": "JobTeleported", "whatever": True},
        ]
    )
    messages = parse_job_messages(body)
    assert [type(message) for message in messages] == [
        JobAvailable,
        JobStarted,
        JobCompleted,
        UnknownJobMessage,
    ]
    assert messages[3] == UnknownJobMessage(message_type="JobTeleported")


def test_dotnet_timestamps_parse_and_go_zero_time_means_unset() -> None:
    (started,) = parse_job_messages(
        json.dumps(
            [
                {
                    "messageType": "JobStarted",
                    "runnerAssignTime": "2026-05-01T10:00:20.1234567Z",
                    "finishTime": "0001-01-01T00:00:00Z",
                    "queueTime": None,
                }
            ]
        )
    )
    assert isinstance(started, JobStarted)
    assert started.runner_assign_time == datetime(2026, 5, 1, 10, 0, 20, 123456, tzinfo=UTC)
    assert started.finish_time is None
    assert started.queue_time is None


def test_a_malformed_element_does_not_lose_the_rest_of_the_batch() -> None:
    messages = parse_job_messages(
        json.dumps(
            [
                {"messageType": "JobStarted", "runnerId": "not-a-number"},
                {"messageType": "JobCompleted", "runnerName": "r-2", "result": "succeeded"},
                "not an object",
            ]
        )
    )
    assert isinstance(messages[0], UnknownJobMessage)
    assert isinstance(messages[1], JobCompleted)
    assert messages[1].runner_name == "r-2"
    assert isinstance(messages[2], UnknownJobMessage)


def test_an_empty_body_holds_no_job_messages() -> None:
    assert parse_job_messages("") == []
    assert parse_job_messages("  ") == []


def test_statistics_report_their_own_inconsistencies() -> None:
    assert Statistics().inconsistencies() == []
    assert Statistics(
        total_registered_runners=0,
        total_busy_runners=2,
        total_running_jobs=3,
        total_assigned_jobs=2,
    ).inconsistencies() == ["registered < busy + idle", "running > assigned"]
