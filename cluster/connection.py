"""The connection to Redis: one node or a Redis Cluster, the Functions library, and calls.

`connect` finds out which the URL names (a node that says `cluster_enabled:1` is asked for its
cluster), makes sure the library this gateway was built with is the one loaded (loading it into
an empty store; refusing another version), and returns a `Redis` whose `batch` sends many
Function calls in one round: one pipeline per node, the nodes in parallel.

Every failure to reach Redis becomes `RedisDown`, which the HTTP layer answers with 503: a check
fails closed, and the caller retries once Redis is back (the client reconnects by itself).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError, MovedError, RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

LIBRARY = (Path(__file__).parent / "flashguard.lua").read_text()
LIBRARY_NAME = "flashguard"
TIMEOUT = 2.0  # seconds for one call: past it, Redis counts as unreachable for this request
WHERE_CACHE = 1 << 17  # keys whose primary is remembered (cleared when full)
CONNECTIONS = 80  # per primary: a batch holds one while it runs, and waits for one when all are busy
WAIT_MS = 1000  # how long a write waits for its replicas with --redis-wait-replicas

Call = tuple[str, Sequence[str], Sequence[Any]]


class RedisDown(Exception):
    """Redis could not be reached, or answered with an error: nothing was acknowledged."""


class LibraryMismatch(RuntimeError):
    """The store holds another version of the Functions library."""


class Redis:
    """Calls to one Redis or a Redis Cluster. `client` (redis-py's) knows the cluster's slots and
    makes the rare calls (configuration, library); a batch of Function calls goes straight to each
    primary on a plain pipelined connection, the primaries in parallel: redis-py's cluster pipeline
    costs twice the CPU per call (measured 1,000 against 500 us per batch of 12 calls), which a
    check of some thirty calls feels. Each primary's pool holds `CONNECTIONS` and makes a batch
    wait for a free one (a pool that ran dry would fail the call)."""

    def __init__(self, client: aioredis.Redis | RedisCluster, clustered: bool, wait_replicas: int, url: str, options: dict[str, Any]) -> None:
        self.client = client
        self.clustered = clustered
        self.wait_replicas = wait_replicas
        like = aioredis.ConnectionPool.from_url(url, **options)  # the URL's connection class and settings (auth, db, socket)
        self._connection_class, self._connection_kwargs = like.connection_class, like.connection_kwargs
        self._primaries: dict[str, _Pool] = {}  # "host:port" ("" for a single Redis) -> its connections
        self._stale = False  # a call failed: learn the slots again before the next batch
        self._where: dict[str, str] = {}  # key -> its primary, see `_primary_of`

    async def call(self, fn: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return (await self.batch([(fn, keys, args)]))[0]

    async def batch(self, calls: list[Call]) -> list[Any]:
        """Every call's answer, in order. A call that Redis refused raises (after all were sent).
        A call answered MOVED (its slot changed hands: a failover) is sent once more where the
        slot now is; MOVED means it did not run."""
        if not calls:
            return []
        try:
            async with asyncio.timeout(TIMEOUT):
                if self._stale:
                    await self._learn_slots()
                answers = await self._send(calls)
                moved = [i for i, answer in enumerate(answers) if isinstance(answer, MovedError)]
                if moved:
                    await self._learn_slots()
                    for i, answer in zip(moved, await self._send([calls[i] for i in moved])):
                        answers[i] = answer
        except (RedisError, OSError, TimeoutError) as e:
            self._stale = self.clustered
            raise RedisDown(f"{type(e).__name__}: {e}") from None
        for answer in answers:
            if isinstance(answer, Exception):
                raise RedisDown(f"{type(answer).__name__}: {answer}")
        return answers

    async def _send(self, calls: list[Call]) -> list[Any]:
        groups: dict[str, list[int]] = {}
        for i, (_, keys, _) in enumerate(calls):
            groups.setdefault(self._primary_of(keys[0]), []).append(i)
        answers: list[Any] = [None] * len(calls)

        async def send(primary: str, indexes: list[int]) -> None:
            commands: list[tuple[Any, ...]] = [("FCALL", fn, len(keys), *keys, *args) for fn, keys, args in (calls[i] for i in indexes)]
            if self.wait_replicas:  # on the connection that sent the calls, after them: a Function cannot wait
                commands.append(("WAIT", self.wait_replicas, WAIT_MS))
            out = await self._pool(primary).pipelined(commands)
            if self.wait_replicas:
                acked = out.pop()
                if isinstance(acked, Exception) or acked < self.wait_replicas:
                    raise RedisDown(f"{primary}: only {acked} of {self.wait_replicas} replicas acknowledged within {WAIT_MS} ms")
            for i, answer in zip(indexes, out):
                answers[i] = answer

        if len(groups) == 1:
            await send(*next(iter(groups.items())))
        else:
            await asyncio.gather(*(send(primary, indexes) for primary, indexes in groups.items()))
        return answers

    def _primary_of(self, key: str) -> str:
        """The "host:port" of the primary serving `key` ("" for a single Redis), remembered until
        the slots are learnt again: an actor's keys come back check after check."""
        primary = self._where.get(key)
        if primary is None:
            if not isinstance(self.client, RedisCluster):
                return ""
            if len(self._where) >= WHERE_CACHE:
                self._where.clear()
            node = self.client.nodes_manager.get_node_from_slot(int(key_slot(key.encode())))
            primary = self._where[key] = f"{node.host}:{node.port}"
        return primary

    def _pool(self, primary: str) -> _Pool:
        pool = self._primaries.get(primary)
        if pool is None:
            kwargs = dict(self._connection_kwargs)
            if primary:
                host, _, port = primary.rpartition(":")
                kwargs.update(host=host, port=int(port))
            pool = self._primaries[primary] = _Pool(lambda: self._connection_class(**kwargs), CONNECTIONS)
        return pool

    async def _learn_slots(self) -> None:
        assert isinstance(self.client, RedisCluster)
        await self.client.nodes_manager.initialize()
        self._where.clear()
        self._stale = False

    async def get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(TIMEOUT):
                value = await self.client.get(key)
                return value.encode() if isinstance(value, str) else value
        except (RedisError, OSError, TimeoutError) as e:
            raise RedisDown(f"{type(e).__name__}: {e}") from None

    async def set(self, key: str, value: bytes | str | int) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                await self.client.set(key, value)
        except (RedisError, OSError, TimeoutError) as e:
            raise RedisDown(f"{type(e).__name__}: {e}") from None

    async def close(self) -> None:
        for pool in self._primaries.values():
            await pool.close()
        await self.client.aclose()


def _pack(commands: list[tuple[Any, ...]]) -> bytes:
    """The commands in RESP, by hiredis's C packer (redis-py's own costs a third of a batch's CPU)."""
    return b"".join(map(hiredis.pack_command, commands))


class _Pool:
    """Connections to one primary: an idle one is taken as it is, a new one made while fewer than
    `size` exist, else the batch waits for one. redis-py's pools also check every connection's
    health and record metrics on each take, a third of a batch's CPU; a broken connection shows
    on use here instead, and is dropped."""

    def __init__(self, make: Callable[[], AbstractConnection], size: int) -> None:
        self._make = make
        self._idle: list[AbstractConnection] = []
        self._free = asyncio.Semaphore(size)

    async def pipelined(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The commands sent in one write on one connection, and their answers (an error reply in
        its place)."""
        async with self._free:
            connection = self._idle.pop() if self._idle else self._make()
            try:
                await connection.send_packed_command(_pack(commands))  # connects a new connection first
                answers: list[Any] = []
                for _ in commands:
                    try:
                        answers.append(await connection.read_response())
                    except ResponseError as e:
                        answers.append(e)
            except BaseException as e:
                await connection.disconnect()  # a half-read connection must not serve another batch
                if isinstance(e, (OSError, ConnectionError)):
                    await self.close()  # the idle ones are likely as dead (Redis restarted, a failover)
                raise
            self._idle.append(connection)
            return answers

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.disconnect()


async def connect(url: str, wait_replicas: int = 0) -> Redis:
    """Connect, detect a cluster, and make sure our Functions library is the one loaded. With
    `wait_replicas`, every batch returns only once that many replicas of each primary it wrote to
    hold it (else it fails as `RedisDown`: not acknowledged)."""
    # Maintenance notifications (redis-py 8's default with RESP3) are a Redis 8 handshake: against
    # 7.0 it fails on every new connection, and under a burst of them left closed transports in
    # the pool (RuntimeError on the next call). Off: a failover is followed through MOVED anyway.
    # No socket timeout on the connections batches use: every read would arm a timer; `batch`
    # bounds the whole batch instead (redis-py's cluster client, for the rare calls, keeps one).
    options: dict[str, Any] = {
        "socket_timeout": None,
        "socket_connect_timeout": TIMEOUT,
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    probe = aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(url, max_connections=CONNECTIONS, timeout=TIMEOUT, **options))
    try:
        info = await probe.info("cluster")
    except (RedisError, OSError) as e:
        await probe.aclose()
        raise RedisDown(f"cannot reach Redis at {url}: {e}") from None
    if info.get("cluster_enabled"):
        await probe.aclose()
        cluster = RedisCluster.from_url(url, **{**options, "socket_timeout": TIMEOUT})
        redis = Redis(cluster, clustered=True, wait_replicas=wait_replicas, url=url, options=options)
    else:
        redis = Redis(probe, clustered=False, wait_replicas=wait_replicas, url=url, options=options)
    try:
        async with asyncio.timeout(5 * TIMEOUT):
            await _load_library(redis)
    except TimeoutError:
        await redis.close()
        raise RedisDown(f"Redis at {url} did not answer the library check within {5 * TIMEOUT:g} s") from None
    except BaseException:
        await redis.close()
        raise
    return redis


async def _load_library(redis: Redis) -> None:
    """Load the library where it is missing; refuse to run beside another version of it. (On a
    cluster the library is loaded on every primary; replicas get it by replication.)"""
    client = redis.client
    try:
        codes = _codes(await client.function_list(library=LIBRARY_NAME, withcode=True))
        if not codes:
            try:
                await client.function_load(LIBRARY)
                return
            except ResponseError as e:
                if "already exists" not in str(e):
                    raise
            # Another gateway starting beside this one (a sibling worker) loaded it between our
            # list and our load: judge its version like any library found at start.
            codes = _codes(await client.function_list(library=LIBRARY_NAME, withcode=True))
    except ResponseError as e:
        raise RedisDown(f"Redis refused the Functions library (Redis 7 or later is needed): {e}") from None
    except (RedisError, OSError) as e:
        raise RedisDown(str(e)) from None
    if any(code != LIBRARY for code in codes):
        theirs = next((_version(c) for c in codes if c != LIBRARY), "?")
        raise LibraryMismatch(
            f"Redis holds flashguard's Functions library version {theirs}; this gateway runs version "
            f"{_version(LIBRARY)}. Stop the gateways of the other version, then load this one with "
            f"'redis-cli FUNCTION DELETE {LIBRARY_NAME}' (on every primary) and start again"
        )


def _codes(listed: Any) -> list[str]:
    """The library code from a FUNCTION LIST answer: one entry per node on a cluster (a dict of
    node -> answer), or one answer."""
    answers = listed.values() if isinstance(listed, dict) else [listed]
    codes: list[str] = []
    for answer in answers:
        for lib in answer or []:
            fields = dict(zip(lib[::2], lib[1::2])) if isinstance(lib, list) else lib
            code = fields.get(b"library_code", fields.get("library_code"))
            if code is not None:
                codes.append(code.decode() if isinstance(code, bytes) else code)
    return codes


def _version(code: str) -> str:
    """The library's VERSION and a digest of its code: two builds of one version still differ."""
    version = next((line.split("=", 1)[1].strip().strip("'\"") for line in code.splitlines() if line.startswith("local VERSION")), "?")
    return f"{version} ({hashlib.sha1(code.encode()).hexdigest()[:8]})"
