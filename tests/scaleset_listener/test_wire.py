import json
from datetime import UTC, datetime

import pytest

from scaleset_listener.errors import ProtocolError
from scaleset_listener.wire import (
    JobAvailable,
    JobCompleted,
    JobStarted,
    MessageEnvelope,
    ScaleSet,
    Session,
    Statistics,
    UnknownJobMessage,
    Unparseable,
    UnparseableBody,
    UnparseableJobMessage,
    excerpt,
    parse_envelope,
    parse_job_messages,
    parse_model,
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
                {"messagetype": "jobavailable", "runnerRequestId": 3, "requestLabels": ["a", 5]},
            ]
        )
    )
    assert messages[0] == UnparseableJobMessage(
        0,
        "JobStarted",
        Unparseable(
            part="body[0]",
            field="body[0].runnerId",
            reason="Input should be a valid integer, unable to parse string as an integer",
            excerpt='"not-a-number"',
        ),
    )
    assert isinstance(messages[1], JobCompleted)
    assert messages[1].runner_name == "r-2"
    assert messages[2] == UnparseableJobMessage(
        2, "", Unparseable("body[2]", "body[2]", "not a JSON object", '"not an object"')
    )
    assert isinstance(messages[3], UnparseableJobMessage)
    assert (messages[3].index, messages[3].message_type) == (3, "jobavailable")
    assert messages[3].problem.field == "body[3].requestLabels[1]"
    assert messages[3].problem.excerpt == "5"


@pytest.mark.parametrize(
    ("body", "reason"),
    [("[{not json", "not JSON: "), ('{"a": 1}', "not a JSON array of job messages")],
)
def test_a_body_that_is_not_a_json_array_is_one_unparseable_part(body: str, reason: str) -> None:
    with pytest.raises(UnparseableBody) as raised:
        parse_job_messages(body)
    assert isinstance(raised.value, ProtocolError)
    assert raised.value.problem.field == "body"
    assert raised.value.problem.reason.startswith(reason)


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


def test_unreadable_statistics_are_dropped_and_described_not_fatal() -> None:
    envelope = parse_envelope(
        {
            "messageId": 7,
            "messageType": "RunnerScaleSetJobMessages",
            "body": "[]",
            "statistics": {"totalAssignedJobs": "lots", "totalRunningJobs": "also bad"},
        },
        "get message",
    )
    assert envelope.message_id == 7
    assert envelope.body == "[]"
    # Statistics are used whole or not at all: a half-read snapshot would scale on zeros.
    assert envelope.statistics is None
    assert envelope.unreadable("statistics")
    # One description per dropped part, naming its first offending field.
    (problem,) = envelope.unparseable
    assert problem.part == "statistics"
    assert problem.log_fields() == {
        "field": "statistics.totalAssignedJobs",
        "reason": "Input should be a valid integer, unable to parse string as an integer",
        "excerpt": '"lots"',
    }


def test_every_envelope_part_but_the_id_is_tolerated() -> None:
    envelope = parse_envelope(
        {"MessageId": 8, "messageType": {"new": "shape"}, "body": ["an", "array"]}, "get message"
    )
    assert (envelope.message_id, envelope.message_type, envelope.body) == (8, "", "")
    assert [p.field for p in envelope.unparseable] == ["messageType", "body"]
    assert envelope.unreadable("body")
    assert not envelope.unreadable("statistics")
    good = parse_envelope({"messageId": 9, "statistics": {"totalAssignedJobs": 1}}, "get")
    assert good.unparseable == ()
    assert good.statistics == Statistics(total_assigned_jobs=1)


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        ({"messageId": "abc", "statistics": {"totalAssignedJobs": "lots"}}, 'messageId "abc"'),
        ({"messageId": None, "body": "[]"}, "no messageId"),
        ({"body": "[]"}, "no messageId"),
        (["not", "an", "object"], "not a JSON object"),
    ],
)
def test_a_message_whose_id_cannot_be_read_is_refused(answer: object, detail: str) -> None:
    with pytest.raises(ProtocolError, match="get message: ") as raised:
        parse_envelope(answer, "get message")
    assert detail in str(raised.value)


def test_session_and_scale_set_tolerate_unreadable_statistics_only() -> None:
    session = parse_model(
        Session,
        {
            "sessionId": "s-1",
            "messageQueueUrl": "https://broker/q",
            "messageQueueAccessToken": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            "statistics": {"totalIdleRunners": {"count": 2}},
        },
        "create session",
    )
    assert session.session_id == "s-1"
    assert session.statistics is None
    assert [p.field for p in session.unparseable] == ["statistics.totalIdleRunners"]
    scale_set = parse_model(ScaleSet, {"id": 4, "statistics": "gone"}, "find scale set")
    assert (scale_set.id, scale_set.statistics) == (4, None)
    assert [p.field for p in scale_set.unparseable] == ["statistics"]
    # The session's own fields stay strict.
    with pytest.raises(ProtocolError, match="sessionId"):
        parse_model(Session, {"sessionId": ["s"], "statistics": "bad"}, "create session")


def test_excerpts_are_short_and_never_show_a_credential() -> None:
    assert excerpt("lots") == '"lots"'
    assert excerpt({"value": 3}) == '{"value":3}'
    long = excerpt(list(range(100)))
    assert len(long) == 60
    assert long.endswith("...")
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    assert "eyJ" not in excerpt({"token": jwt})
    assert "ghp_" not in excerpt("ghp_" + "a" * 36)
    assert excerpt("QUJD" * 20) == '"<redacted>"'  # a long base64 run, e.g. a JIT config
    job_id = "3f2a1b4c-1234-5678-9abc-def012345678"
    assert excerpt(job_id) == f'"{job_id}"'
    # Whatever is named like a secret is never shown, whatever its value looks like.
    (message,) = parse_job_messages(
        json.dumps([{"messageType": "JobStarted", "runnerId": 1, "jobId": {"jitConfig": "x"}}])
    )
    assert isinstance(message, UnparseableJobMessage)
    assert message.problem.field == "body[0].jobId"
    assert message.problem.excerpt == '{"jitConfig":"<redacted>"}'
    problem = Unparseable.from_error(
        {"type": "string_type", "loc": ("messageQueueAccessToken",), "msg": "bad", "input": 5}
    )
    assert problem.excerpt == "<redacted>"
