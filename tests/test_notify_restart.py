"""Nothing lost across restarts: a webhook down for a while and a daemon restarted twice.

Each "daemon" is a new :class:`AlertDispatcher` on the same outbox directory, as the real
daemon builds one at start. The first is stopped while a delivery is in flight (the
receiver has the request but has not answered), the second while the receiver is down with
transitions waiting. The third finds them all, delivers them first and in order, then the
new ones. The receiver, deduplicating by ``Idempotency-Key``, ends with each transition
exactly once, and the outbox ends empty.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from test_notify_webhook import Receiver, transition, wait_until
from tools import running

from monitor.notify import AlertDispatcher, WebhookNotifier


def dispatcher(outbox: Path, url: str) -> AlertDispatcher:
    hook = WebhookNotifier(url, timeout_s=5.0, max_backoff_s=0.2, token="t")
    return AlertDispatcher([hook], outbox, rng=random.Random(3), initial_backoff_s=0.02)


def pending_files(outbox: Path) -> list[Path]:
    return sorted((outbox / "webhook").iterdir())


async def test_restarts_and_an_outage_deliver_every_transition_exactly_once_per_key(
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "outbox"
    ts = [transition(i) for i in range(8)]
    keys = [t.idempotency_key for t in ts]
    receiver = Receiver()
    await receiver.start()
    try:
        # Daemon 1: delivers two, then is stopped while the third is in flight.
        d1 = dispatcher(outbox, receiver.url)
        async with running(d1):
            d1.submit(ts[:2])
            await d1.flush()  # the writer thread has put it in the outbox
            await wait_until(lambda: d1.stats["webhook"].delivered == 2, "two deliveries")
            receiver.mode = "hang"
            d1.submit(ts[2:3])
            await d1.flush()  # the writer thread has put it in the outbox
            await wait_until(lambda: len(receiver.requests) == 3, "the request in flight")
        assert d1.stats["webhook"].pending == 1
        assert len(pending_files(outbox)) == 1  # not acknowledged: still in the outbox

        # The receiver goes down. Daemon 2 queues more, cannot deliver, and is stopped.
        await receiver.stop()
        d2 = dispatcher(outbox, receiver.url)
        assert [t.idempotency_key for t in d2.pending("webhook")] == keys[2:3]
        async with running(d2):
            d2.submit(ts[3:5])
            await d2.flush()  # the writer thread has put it in the outbox
            d2.submit(ts[5:6])
            await d2.flush()  # the writer thread has put it in the outbox
            await wait_until(lambda: d2.stats["webhook"].retries >= 3, "retries while down")
        assert d2.stats["webhook"].delivered == 0
        assert len(pending_files(outbox)) == 4

        # Daemon 3 starts with the receiver still down and the engine already producing.
        d3 = dispatcher(outbox, receiver.url)
        assert [t.idempotency_key for t in d3.pending("webhook")] == keys[2:6]
        d3.submit(ts[6:8])
        await d3.flush()  # the writer thread has put it in the outbox
        assert len(pending_files(outbox)) == 6
        receiver.mode = "accept"
        async with running(d3):
            await asyncio.sleep(0.1)
            await receiver.start()
            await wait_until(lambda: d3.stats["webhook"].pending == 0, "the outbox to drain")
        s = d3.stats["webhook"]
        assert (s.delivered, s.failed, s.pending) == (6, 0, 0)
    finally:
        await receiver.stop()

    # The request daemon 1 left unanswered was delivered again: a duplicate by key, once.
    assert [r.answered for r in receiver.requests] == ["200", "200", "hung"] + ["200"] * 6
    assert receiver.accepted_keys() == keys[:3] + keys[2:]
    assert receiver.deduped() == keys
    assert pending_files(outbox) == []
