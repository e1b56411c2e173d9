"""The real-Redis fixtures of tests/redis_servers.py, driven with redis-py's asyncio clients."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError

from tests.redis_servers import SLOTS, Cluster, RedisServer, executable, parse_fields

# Two keys in two slots, and two keys that share a slot through the hash tag {u1}.
A, B = "a", "b"
TAGGED = ("{u1}:a", "{u1}:b")

LIBRARY = """#!lua name=fgtest
redis.register_function('set_both', function(keys, args)
  redis.call('SET', keys[1], args[1])
  redis.call('SET', keys[2], args[2])
  return 'OK'
end)
"""


def test_key_slots() -> None:
    assert key_slot(A.encode()) != key_slot(B.encode())
    assert key_slot(TAGGED[0].encode()) == key_slot(TAGGED[1].encode()) == key_slot(b"u1")


async def test_single_answers(redis_url: str, redis_single: RedisServer) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_single.port}"
    assert redis_single.port != 6379
    r = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await r.ping() is True
        assert await r.config_get("appendonly") == {"appendonly": "yes"}
        assert await r.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert (await r.info("server"))["redis_mode"] == "standalone"
        assert await r.dbsize() == 0
        await r.set("left-over", "1")
        await r.function_load(LIBRARY)
        assert await r.fcall("set_both", 2, A, B, "x", "y") == "OK"  # one server: no slots
        assert await r.mget(A, B) == ["x", "y"]
    finally:
        await r.aclose()


async def test_single_is_flushed_between_tests(redis_url: str) -> None:
    # Runs after test_single_answers, which left keys and a function library behind.
    r = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert await r.dbsize() == 0
        assert await r.function_list() == []
    finally:
        await r.aclose()


async def test_cluster_1_holds_every_slot(redis_cluster_1_url: str, redis_cluster_1: RedisServer) -> None:
    rc = RedisCluster.from_url(redis_cluster_1_url, decode_responses=True)
    try:
        info = parse_fields(await rc.execute_command("CLUSTER", "INFO", target_nodes=RedisCluster.RANDOM))
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_assigned"] == info["cluster_slots_ok"] == str(SLOTS)
        assert info["cluster_known_nodes"] == "1"
        assert [n.port for n in rc.get_nodes()] == [redis_cluster_1.port]
        await rc.set(A, "1")
        await rc.set(B, "2")  # another slot, same node
        assert await rc.get(A) == "1" and await rc.get(B) == "2"
        assert await rc.mset({TAGGED[0]: "x", TAGGED[1]: "y"}) is True
        assert await rc.mget(*TAGGED) == ["x", "y"]
    finally:
        await rc.aclose()


async def test_cluster_1_refuses_a_cross_slot_mset(redis_cluster_1_url: str) -> None:
    # Sent straight to the node (redis-py's cluster client would refuse before sending).
    r = redis.asyncio.Redis.from_url(redis_cluster_1_url, decode_responses=True)
    rc = RedisCluster.from_url(redis_cluster_1_url, decode_responses=True)
    try:
        with pytest.raises(ClusterCrossSlotError) as refused:
            await r.mset({A: "1", B: "2"})
        assert refused.value.status_code == "CROSSSLOT"  # the server's word, not redis-py's
        with pytest.raises(ClusterCrossSlotError) as refused:
            await rc.execute_command("MSET", A, "1", B, "2", target_nodes=RedisCluster.RANDOM)
        assert refused.value.status_code == "CROSSSLOT"
        assert [await r.get(A), await r.get(B)] == [None, None]  # nothing half-written
        assert await r.mset({TAGGED[0]: "1", TAGGED[1]: "2"}) is True
        assert await rc.mget(*TAGGED) == ["1", "2"]
    finally:
        await r.aclose()
        await rc.aclose()


async def test_cluster_1_refuses_a_function_call_with_keys_of_two_slots(redis_cluster_1_url: str) -> None:
    r = redis.asyncio.Redis.from_url(redis_cluster_1_url, decode_responses=True)
    rc = RedisCluster.from_url(redis_cluster_1_url, decode_responses=True)
    try:
        assert await rc.function_load(LIBRARY) == "fgtest"
        with pytest.raises(ClusterCrossSlotError) as refused:
            await r.fcall("set_both", 2, A, B, "x", "y")
        assert refused.value.status_code == "CROSSSLOT"
        assert [await r.get(A), await r.get(B)] == [None, None]  # nothing half-written
        assert await rc.fcall("set_both", 2, *TAGGED, "x", "y") == "OK"
        assert await rc.mget(*TAGGED) == ["x", "y"]
    finally:
        await r.aclose()
        await rc.aclose()


async def test_cluster_1_is_flushed_between_tests(redis_cluster_1_url: str) -> None:
    # Runs after the tests above, which left keys and the fgtest library behind.
    r = redis.asyncio.Redis.from_url(redis_cluster_1_url, decode_responses=True)
    try:
        assert await r.dbsize() == 0
        assert await r.function_list() == []
    finally:
        await r.aclose()


def test_a_missing_redis_server_fails_and_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.fail.Exception, match=r"redis-server is not on PATH.*`\.ci/run` installs them"):
        executable("redis-server")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set: this is an error"):
        executable("redis-cli")


async def _read_all(rc: RedisCluster, values: dict[str, str]) -> dict[str, object]:
    return {key: await rc.get(key) for key in values}


@pytest.mark.cluster6
async def test_cluster_6_fails_over_to_the_replica_with_the_data(redis_cluster_6: Cluster) -> None:
    cluster = redis_cluster_6
    roles = cluster.roles()
    assert sorted(role for _, role, _ in roles) == ["primary"] * 3 + ["replica"] * 3
    assert len({pid for _, _, pid in roles}) == 6
    primaries = cluster.primaries()
    for primary in primaries:
        assert len(cluster.replicas_of(primary)) == 1

    # Five keys on each shard, each shard's written on one connection and WAITed for its replica.
    shard_keys: dict[int, list[str]] = {p.port: [] for p in primaries}
    i = 0
    while any(len(keys) < 5 for keys in shard_keys.values()):
        key = f"key-{i}"
        keys = shard_keys[cluster.primary_for_slot(key_slot(key.encode())).port]
        if len(keys) < 5:
            keys.append(key)
        i += 1
    values = {key: f"value-of-{key}" for keys in shard_keys.values() for key in keys}
    for primary in primaries:
        direct = redis.asyncio.Redis(host="127.0.0.1", port=primary.port, single_connection_client=True)
        try:
            for key in shard_keys[primary.port]:
                await direct.set(key, values[key])
            assert await direct.wait(1, 5000) == 1
        finally:
            await direct.aclose()

    rc = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes], decode_responses=True)
    try:
        assert await _read_all(rc, values) == values
        victim = primaries[0]
        heir = cluster.replicas_of(victim)[0]
        killed = time.monotonic()
        cluster.kill_primary(victim)
        promoted = cluster.wait_failover()
        failover_seconds = time.monotonic() - killed
        assert promoted is heir
        assert victim.role == "down" and promoted.role == "primary"
        assert len(cluster.primaries()) == 3 and len(cluster.replicas()) == 2
        assert failover_seconds < 15

        # The client that knew the old primary finds the promoted one, and so does a new one.
        assert await _read_all(rc, values) == values
        for key in shard_keys[victim.port]:
            node = rc.get_node_from_key(key)
            assert node is not None and node.port == promoted.port
        fresh = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.startup_nodes],
                             decode_responses=True)
        try:
            assert await _read_all(fresh, values) == values
            await fresh.set(shard_keys[victim.port][0], "after failover")
            assert await rc.get(shard_keys[victim.port][0]) == "after failover"
        finally:
            await fresh.aclose()
    finally:
        await rc.aclose()
