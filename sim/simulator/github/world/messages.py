"""The message queue of each scale set: job messages waiting to be batched, envelopes delivered
but not acknowledged, acknowledgements, and messages injected by the control API.

Messages belong to the scale set, not to the session: a new session sees what the previous one
left unacknowledged.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from simulator.github.model import (
    FIRST_MESSAGE_ID,
    JSON,
    ControlError,
    Envelope,
    MessageQueue,
    Session,
)

if TYPE_CHECKING:
    from simulator.github.world import World


class MessageQueues:
    def __init__(self, world: World) -> None:
        self._world = world
        self._ledger = world.ledger
        self.by_scale_set: dict[int, MessageQueue] = {}
        self._next_message_id = FIRST_MESSAGE_ID

    def open(self, ss_id: int) -> None:
        self.by_scale_set[ss_id] = MessageQueue()

    def close(self, ss_id: int) -> None:
        self.by_scale_set.pop(ss_id, None)

    def post(self, ss_id: int | None, message: JSON) -> None:
        """A job message for the set's next batch (dropped when the set has no queue)."""
        if ss_id is None or ss_id not in self.by_scale_set:
            return
        self.by_scale_set[ss_id].pending.append(message)
        self._ledger.waiters.bump()

    def next_envelope(self, ss_id: int, last_id: int) -> Envelope | None:
        """What a poll with `lastMessageId=last_id` gets: the oldest unacknowledged envelope
        after it, else a new batch of the pending job messages, else None."""
        queue = self.by_scale_set.get(ss_id)
        if queue is None:
            return None
        if self._world.config.implicit_ack and last_id > 0:
            for message_id in [i for i in queue.unacked if i <= last_id]:
                del queue.unacked[message_id]
                queue.acked.add(message_id)
                self._ledger.count("messages_implicitly_acked")
        candidates = [i for i in queue.unacked if i > last_id]
        if candidates:
            return queue.unacked[min(candidates)]
        if not queue.pending:
            return None
        size = min(self._world.config.max_batch, len(queue.pending))
        batch = [queue.pending.popleft() for _ in range(size)]
        return self._new_envelope(ss_id, "RunnerScaleSetJobMessages", json.dumps(batch))

    def deliver(self, session: Session, envelope: Envelope) -> JSON:
        envelope.deliveries += 1
        session.last_answer_message_id = envelope.id
        queue = self.by_scale_set.get(envelope.scale_set_id)
        if queue is not None:
            queue.answered_at_session_end.discard(envelope.id)
        self._ledger.count("messages_delivered")
        if envelope.deliveries > 1:
            self._ledger.count("messages_redelivered")
        session.last_message_id_seen = envelope.id
        body: JSON = {
            "messageId": envelope.id,
            "messageType": envelope.message_type,
            "body": envelope.body,
        }
        # Injected statistics stand in for the computed ones (and for statistics faults), on
        # every delivery, so a client can be shown a shape it does not expect.
        if envelope.statistics is not None:
            stats: JSON | None = envelope.statistics
        else:
            stats = self._world.statistics.as_sent(envelope.scale_set_id, "message")
        if stats is not None:
            body["statistics"] = stats
        self._ledger.event(
            "message_delivered",
            scale_set_id=envelope.scale_set_id,
            message_id=envelope.id,
            delivery=envelope.deliveries,
        )
        return body

    def ack(self, ss_id: int, message_id: int) -> bool:
        """Acknowledge a message; False when the id is unknown."""
        queue = self.by_scale_set.get(ss_id)
        if queue is None:
            return False
        if message_id in queue.unacked:
            del queue.unacked[message_id]
            queue.acked.add(message_id)
            self._ledger.count("messages_acked")
            self._ledger.event("message_acked", scale_set_id=ss_id, message_id=message_id)
            return True
        if message_id in queue.acked:
            self._ledger.count("duplicate_acks")
            self._ledger.event("message_acked_again", scale_set_id=ss_id, message_id=message_id)
            return True
        self._ledger.count("unknown_acks")
        return False

    def inject(
        self,
        ss_id: int,
        message_type: str | None,
        body: str | None,
        job_messages: list[JSON] | None,
        statistics: JSON | None = None,
    ) -> int | None:
        """With message_type, body or statistics: a whole envelope now (its body `body`, else
        the job messages as a batch; `statistics` sent verbatim instead of the computed ones).
        Otherwise the job messages join the pending ones and go out in the next batch."""
        if ss_id not in self._world.scale_sets.by_id:
            raise ControlError(404, f"no scale set {ss_id}")
        if message_type is not None or body is not None or statistics is not None:
            payload = body if body is not None else json.dumps(job_messages or [])
            envelope = self._new_envelope(
                ss_id, message_type or "RunnerScaleSetJobMessages", payload, statistics
            )
            return envelope.id
        self.by_scale_set[ss_id].pending.extend(job_messages or [])
        self._ledger.event(
            "job_messages_injected", scale_set_id=ss_id, count=len(job_messages or [])
        )
        return None

    def session_ended(self, session: Session) -> None:
        """Its client deleted `session`: a message its last poll was answered with, and that is
        not acknowledged, may never have been read (the poll cut off at a clean stop)."""
        queue = self.by_scale_set.get(session.scale_set_id)
        message_id = session.last_answer_message_id
        if queue is not None and message_id is not None and message_id in queue.unacked:
            queue.answered_at_session_end.add(message_id)

    def state(self, ss_id: int) -> JSON:
        queue = self.by_scale_set[ss_id]
        return {
            "pending_job_messages": len(queue.pending),
            "unacked_message_ids": sorted(queue.unacked),
            "unacked_at_session_end_ids": sorted(
                queue.answered_at_session_end.intersection(queue.unacked)
            ),
            "acked_message_ids": sorted(queue.acked),
        }

    def _new_envelope(
        self, ss_id: int, message_type: str, body: str, statistics: JSON | None = None
    ) -> Envelope:
        envelope = Envelope(self._next_message_id, ss_id, message_type, body, statistics=statistics)
        self._next_message_id += 1
        self.by_scale_set[ss_id].unacked[envelope.id] = envelope
        self._ledger.count("messages_created")
        self._ledger.event(
            "message_created",
            scale_set_id=ss_id,
            message_id=envelope.id,
            job_messages=envelope.job_message_types(),
            raw_statistics=statistics is not None,
        )
        return envelope
