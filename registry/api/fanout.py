"""Fan-out of one replica's view to many watch subscribers.

One `Hub` per replica. The follower calls `publish` once per applied store
batch; the hub encodes the message once per distinct suffix filter and offers
the same bytes to every subscriber's bounded queue. It never opens an etcd
watch per subscriber.

Contract:
- `subscribe(from_revision)` decides synchronously, against the current view
  and history, what the subscriber needs first: only the missed deltas when
  the history still holds every change after `from_revision` (a PROGRESS
  message if there are none), else a snapshot (SNAPSHOT..., SNAPSHOT_END).
  Everything published afterwards follows in order, so nothing is missed or
  repeated.
- A subscriber whose queue is full when a message is published is closed with
  a reason (it is too slow); its stream ends with RESOURCE_EXHAUSTED and it
  resumes from its last applied revision, on this replica or another.
- `resync_all` is for when the view was rebuilt without continuity: every
  subscriber is closed and reconnects.
- Propagation: the stream handler calls `written(sub)` after each write;
  an ack that carries the subscriber's apply delay for a DELTAS message's
  revision adds one sample to `propagation`: (written - published) + the
  subscriber's delay, i.e. from this replica's view applying the revision
  to the change taking effect at the subscriber, network transit excluded.
- Single event loop: all methods are called from the loop's thread.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from registry.api import convert
from registry.model import Instance
from registry.view import Delta, History, View, matches_suffix

Clock = Callable[[], float]
_PUBLISH_WINDOW = 65_536
# Largest merged DELTAS write (clients accept 4 MiB messages by default).
MAX_MERGED_BYTES = 1 << 20


class SubscriptionClosed(Exception):
    """The hub closed the subscription; the message says why."""


@dataclass
class SubscriberStats:
    subscriber_id: str
    peer: str
    applied_revision: int
    lag_revisions: int
    lag_seconds: float
    queued_messages: int


@dataclass(frozen=True, slots=True)
class PropagationSample:
    """One measured propagation to one subscriber (see module docstring)."""

    subscriber_id: str
    revision: int
    seconds: float
    at_unix: float


class WriteLog:
    """When the last `size` DELTAS messages were written to one stream: two fixed arrays
    (1 KiB per subscriber at the default size), so 1,000 subscribers cost ~1 MiB."""

    def __init__(self, size: int = 64) -> None:
        self._revisions = array("q", bytes(8 * size))
        self._times = array("d", bytes(8 * size))
        self._next = 0

    def add(self, revision: int, at: float) -> None:
        self._revisions[self._next] = revision
        self._times[self._next] = at
        self._next = (self._next + 1) % len(self._revisions)

    def time_of(self, revision: int) -> float | None:
        """When the message with `revision` was written, if it is among the last `size`."""
        for i, r in enumerate(self._revisions):
            if r == revision and revision:
                return self._times[i]
        return None


class Subscription:
    """One watch stream's pending messages. Owned by the hub; drained by the stream handler."""

    def __init__(self, subscriber_id: str, peer: str, suffix: str, floor: int, max_queued: int) -> None:
        self.subscriber_id = subscriber_id
        self.peer = peer
        self.suffix = suffix
        # Deltas at or below `floor` were already applied by the subscriber.
        self.floor = floor
        self.applied_revision = floor
        self._max_queued = max_queued
        # (encoded message, its revision if it is a DELTAS message else 0)
        self._queue: deque[tuple[bytes, int]] = deque()
        self._popped = 0  # revision of the DELTAS message last handed out (0: another kind)
        self.written = WriteLog()
        self._snapshot: Iterator[bytes] | None = None
        self._wake = asyncio.Event()
        self.closed_reason: str | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def offer(self, message: bytes, deltas_revision: int = 0) -> bool:
        """Queue a message (a DELTAS message gives its revision); False, and nothing queued, if full."""
        if len(self._queue) >= self._max_queued:
            return False
        self._queue.append((message, deltas_revision))
        self._wake.set()
        return True

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self._wake.set()

    def start_snapshot(self, chunks: Iterator[bytes]) -> None:
        self._snapshot = chunks
        self._wake.set()

    async def next_message(self) -> bytes:
        """The next message to send: snapshot chunks first, then queued ones.

        Consecutive queued DELTAS messages go out as one (a subscriber that fell
        behind catches up in fewer, larger writes): concatenated encodings of
        protobuf messages parse as their merge, which for DELTAS is the deltas
        in order with the last revision. Raise `SubscriptionClosed` once the
        hub closed the subscription.
        """
        while True:
            if self.closed_reason is not None:
                raise SubscriptionClosed(self.closed_reason)
            self._popped = 0
            if self._snapshot is not None:
                chunk = next(self._snapshot, None)
                if chunk is not None:
                    return chunk
                self._snapshot = None
            if self._queue:
                return self._pop_merged()
            self._wake.clear()
            await self._wake.wait()

    def note_written(self, now: float) -> None:
        """The message last handed out was written to the stream at `now`."""
        if self._popped:
            self.written.add(self._popped, now)

    def _pop_merged(self) -> bytes:
        message, revision = self._queue.popleft()
        self._popped = revision
        if not revision or not self._queue or not self._queue[0][1]:
            return message
        parts, size = [message], len(message)
        while self._queue and self._queue[0][1] and size + len(self._queue[0][0]) <= MAX_MERGED_BYTES:
            part, self._popped = self._queue.popleft()
            parts.append(part)
            size += len(part)
        return b"".join(parts)


class Hub:
    """Subscriber registry and fan-out for one replica (see module docstring)."""

    def __init__(
        self,
        view: View,
        history: History,
        replica_id: str,
        *,
        max_queued: int = 4096,
        snapshot_chunk: int = 500,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        propagation_window: int = 1024,
    ) -> None:
        self._view = view
        self._history = history
        self.replica_id = replica_id
        self._max_queued = max_queued
        self._chunk = snapshot_chunk
        self._clock = clock
        self._wall_clock = wall_clock
        # The most recent propagation samples, oldest first.
        self.propagation: deque[PropagationSample] = deque(maxlen=propagation_window)
        self._subs: set[Subscription] = set()
        # (revision, publish time) of recent publishes, ascending, for lag in seconds.
        self._pub_revisions: list[int] = []
        self._pub_times: list[float] = []
        self.slow_disconnects = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    def subscribe(self, subscriber_id: str, peer: str, from_revision: int, suffix: str) -> Subscription:
        """Register a subscriber and queue what it needs first (see module docstring)."""
        view_rev = self._view.revision
        missed = self._history.since(from_revision) if from_revision > 0 else None
        floor = max(from_revision, view_rev) if missed is None else from_revision
        sub = Subscription(subscriber_id, peer, suffix, floor, self._max_queued)
        if missed is None:
            instances = [i for i in self._view.instances() if matches_suffix(i.service, suffix)]
            sub.applied_revision = 0
            sub.start_snapshot(self._snapshot_chunks(instances, view_rev))
        else:
            wanted = [d for d in missed if matches_suffix(d.service, suffix)]
            for start in range(0, len(wanted), self._chunk):
                part = wanted[start : start + self._chunk]
                sub.offer(self._encode_deltas(part, part[-1].revision), part[-1].revision)
            if not wanted:
                sub.offer(self._progress_bytes())
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, deltas: Sequence[Delta], revision: int) -> None:
        """Offer the deltas of one applied batch to every subscriber; close the ones that are full."""
        if not deltas:
            return
        self._record_publish(revision)
        encoded: dict[str, bytes] = {}
        for sub in list(self._subs):
            if sub.floor >= revision:
                continue
            if sub.floor > deltas[0].revision:
                msg = self._filtered(deltas, sub, revision)
            elif sub.suffix in encoded:
                msg = encoded[sub.suffix]
            else:
                msg = encoded[sub.suffix] = self._filtered(deltas, sub, revision)
            if msg and not sub.offer(msg, revision):
                self._close_slow(sub)

    def progress(self) -> None:
        """Tell every idle subscriber the view's revision (keeps streams and lag fresh)."""
        msg = self._progress_bytes()
        for sub in list(self._subs):
            if sub.queued == 0 and not sub.offer(msg):
                self._close_slow(sub)

    def resync_all(self, reason: str) -> None:
        """Close every subscription (they reconnect and resume or re-snapshot)."""
        for sub in list(self._subs):
            sub.close(reason)
        self._subs.clear()

    def written(self, sub: Subscription) -> None:
        """`sub`'s stream has just written the message it last took."""
        sub.note_written(self._clock())

    def record_applied(self, sub: Subscription, revision: int, apply_delay_us: int | None = None) -> None:
        """An ack: `sub` applied up to `revision`; with its delay, a propagation sample if measurable."""
        sub.applied_revision = max(sub.applied_revision, revision)
        if apply_delay_us is None or apply_delay_us < 0:
            return
        written = sub.written.time_of(revision)
        i = bisect.bisect_left(self._pub_revisions, revision)
        if written is None or i == len(self._pub_revisions) or self._pub_revisions[i] != revision:
            return  # not a DELTAS message this replica published and wrote to `sub` recently
        seconds = max(0.0, written - self._pub_times[i]) + apply_delay_us / 1e6
        self.propagation.append(
            PropagationSample(sub.subscriber_id or sub.peer, revision, seconds, self._wall_clock())
        )

    def stats(self) -> list[SubscriberStats]:
        now, view_rev = self._clock(), self._view.revision
        return [
            SubscriberStats(
                subscriber_id=s.subscriber_id,
                peer=s.peer,
                applied_revision=s.applied_revision,
                lag_revisions=max(0, view_rev - s.applied_revision),
                lag_seconds=self._lag_seconds(s.applied_revision, now),
                queued_messages=s.queued,
            )
            for s in sorted(self._subs, key=lambda s: (s.subscriber_id, s.peer))
        ]

    def _record_publish(self, revision: int) -> None:
        self._pub_revisions.append(revision)
        self._pub_times.append(self._clock())
        if len(self._pub_revisions) > 2 * _PUBLISH_WINDOW:
            del self._pub_revisions[:-_PUBLISH_WINDOW]
            del self._pub_times[:-_PUBLISH_WINDOW]

    def _lag_seconds(self, applied: int, now: float) -> float:
        """Age of the oldest published revision the subscriber has not applied (0 if none)."""
        i = bisect.bisect_right(self._pub_revisions, applied)
        return max(0.0, now - self._pub_times[i]) if i < len(self._pub_times) else 0.0

    def _filtered(self, deltas: Sequence[Delta], sub: Subscription, revision: int) -> bytes:
        wanted = [d for d in deltas if d.revision > sub.floor and matches_suffix(d.service, sub.suffix)]
        return self._encode_deltas(wanted, revision) if wanted else b""

    def _progress_bytes(self) -> bytes:
        return convert.progress_message(self._view.revision, self.replica_id).SerializeToString()

    def _encode_deltas(self, deltas: Sequence[Delta], revision: int) -> bytes:
        return convert.deltas_message(deltas, revision, self.replica_id).SerializeToString()

    def _snapshot_chunks(self, instances: list[Instance], revision: int) -> Iterator[bytes]:
        """Encode lazily, one chunk per call, so a large snapshot does not stall the loop."""
        if not instances:
            yield convert.snapshot_message(
                (), revision, self.replica_id, last=True, first=True
            ).SerializeToString()
            return
        batches = [instances[i : i + self._chunk] for i in range(0, len(instances), self._chunk)]
        for n, part in enumerate(batches, 1):
            yield convert.snapshot_message(
                part, revision, self.replica_id, last=n == len(batches), first=n == 1
            ).SerializeToString()

    def _close_slow(self, sub: Subscription) -> None:
        self.slow_disconnects += 1
        sub.close(
            f"subscriber {sub.subscriber_id or sub.peer} is too slow: {sub.queued} messages queued; "
            f"reconnect and resume from revision {sub.applied_revision}"
        )
        self._subs.discard(sub)
