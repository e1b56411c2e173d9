"""The state changes of one event-loop turn: run back to back in the order they came, made durable
by one commit, each caller answered with its own result or error (gateway/batch.py)."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest

from gateway.batch import Batch
from snapshots.journal import DiskError


class Commits:
    """A commit that records what had run when it was asked for, and can fail."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.commits: list[list[str]] = []
        self.fail: Exception | None = None

    async def commit(self) -> None:
        self.commits.append(list(self.ran))
        await asyncio.sleep(0)  # the disk
        if self.fail is not None:
            raise self.fail

    def call(self, name: str) -> str:
        self.ran.append(name)
        return name.upper()


async def test_one_turns_calls_run_in_order_share_one_commit_and_resume_in_order() -> None:
    log = Commits()
    batch = Batch(log.commit)
    resumed: list[str] = []

    async def caller(name: str) -> None:
        resumed.append(await batch.run(lambda: log.call(name)))

    await asyncio.gather(*(caller(n) for n in "abcd"))
    assert log.ran == ["a", "b", "c", "d"]
    assert log.commits == [["a", "b", "c", "d"]]  # one commit, after every call of the turn
    assert resumed == ["A", "B", "C", "D"]


async def test_a_later_turn_is_a_batch_of_its_own() -> None:
    log = Commits()
    batch = Batch(log.commit)
    assert await batch.run(lambda: log.call("a")) == "A"
    assert list(await asyncio.gather(batch.run(lambda: log.call("b")), batch.run(lambda: log.call("c")))) == ["B", "C"]
    assert log.commits == [["a"], ["a", "b", "c"]]


async def test_a_refused_call_answers_its_own_error_at_once_and_the_others_go_through() -> None:
    log = Commits()
    batch = Batch(log.commit)

    def refused() -> str:
        raise LookupError("unknown order")

    results = await asyncio.gather(
        batch.run(lambda: log.call("a")), batch.run(refused), batch.run(lambda: log.call("c")), return_exceptions=True
    )
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], LookupError)
    assert log.commits == [["a", "c"]]


async def test_a_failed_commit_reaches_every_caller_of_the_batch() -> None:
    log = Commits()
    log.fail = DiskError("disk full")
    batch = Batch(log.commit)
    results = await asyncio.gather(*(batch.run(partial(log.call, n)) for n in "ab"), return_exceptions=True)
    assert [type(r) for r in results] == [DiskError, DiskError]
    log.fail = None
    assert await batch.run(lambda: log.call("c")) == "C"  # the next turn commits again


async def test_a_caller_that_went_away_leaves_the_batch_whole() -> None:
    log = Commits()
    batch = Batch(log.commit)
    gone = asyncio.ensure_future(batch.run(lambda: log.call("a")))
    stays = asyncio.ensure_future(batch.run(lambda: log.call("b")))
    await asyncio.sleep(0)  # both queued
    gone.cancel()
    assert await stays == "B"
    assert log.ran == ["a", "b"]  # the call ran all the same: its change is journaled like any other
    with pytest.raises(asyncio.CancelledError):
        await gone
