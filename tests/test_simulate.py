"""bench/simulate.py's mechanics against figures worked out by hand (deterministic: seeded, no clock)."""

from __future__ import annotations

import pytest

from bench.simulate import Costs, Topology, batches_per_check, fit, simulate

# 2 actor slots, every check held: read 3 calls, reserve 3, hold 2, commit 1 = 9 calls in 4 rounds
TWO_SLOTS = Costs(gw_fixed=500.0, gw_batch=10.0, r_call=7.0, r_batch=20.0, slots=2, held=1.0)


def test_one_check_at_a_time_takes_the_sum_of_its_parts() -> None:
    topo = Topology(gateways=1, primaries=1, hot=False, rtt_us=100.0)
    got = simulate(TWO_SLOTS, topo, concurrency=1, checks=200, warmup=10)
    one = 500 + 4 * 10 + 4 * 20 + 9 * 7 + 4 * 100  # gateway, its batches, Redis batches and calls, 4 round trips
    assert got.p50_ms == pytest.approx(one / 1000)
    assert got.checks_per_s == pytest.approx(1e6 / one)
    assert (got.batches_per_check, got.calls_per_check) == (4, 9)


def test_a_saturated_gateway_gives_one_over_its_cost_and_two_give_twice() -> None:
    cheap_redis = Costs(gw_fixed=100.0, gw_batch=0.0, r_call=0.1, slots=2)
    one = simulate(cheap_redis, Topology(1, 3, hot=False), concurrency=8, checks=1000, warmup=200)
    two = simulate(cheap_redis, Topology(2, 3, hot=False), concurrency=16, checks=1000, warmup=200)
    assert one.checks_per_s == pytest.approx(10_000, rel=0.02)
    assert two.checks_per_s == pytest.approx(20_000, rel=0.02)
    assert one.gateway_util == pytest.approx(1.0, abs=0.02)


def test_shared_cores_cap_the_processes_together() -> None:
    cheap_redis = Costs(gw_fixed=100.0, gw_batch=0.0, r_call=0.1, slots=2)
    got = simulate(cheap_redis, Topology(2, 3, hot=False, cores=1, rtt_us=0), concurrency=16, checks=1000, warmup=200)
    assert got.checks_per_s == pytest.approx(10_000, rel=0.02)  # one core: 100 µs of gateway per check, whichever gateway


def test_doubling_the_primaries_doubles_throughput_when_they_are_the_bottleneck() -> None:
    heavy_redis = Costs(gw_fixed=1.0, gw_batch=0.0, r_call=50.0, slots=8)
    four = simulate(heavy_redis, Topology(16, 4, hot=False), concurrency=256, checks=1000, warmup=200)
    eight = simulate(heavy_redis, Topology(16, 8, hot=False), concurrency=256, checks=1000, warmup=200)
    # per held check 8+1 + 8+1 + 8 + 1 = 27 calls of 50 µs spread over the primaries
    assert four.checks_per_s == pytest.approx(4 * 1e6 / (27 * 50), rel=0.15)
    assert eight.checks_per_s / four.checks_per_s == pytest.approx(2.0, rel=0.1)


def test_the_hot_activitys_primary_saturates_first_without_buckets() -> None:
    costs = Costs(gw_fixed=1.0, gw_batch=0.0, r_call=50.0, slots=4)
    # per held check 15 calls: 3 on the hot slot (read, reserve, hold), 12 spread over 8 primaries
    one = simulate(costs, Topology(16, 8, buckets=1), concurrency=256, checks=1000, warmup=200)
    assert one.busiest_primary_share == pytest.approx(3 / 15 + 12 / 15 / 8, abs=0.02)
    assert one.primary_util == pytest.approx(1.0, abs=0.03)
    assert one.checks_per_s == pytest.approx(1e6 / (3 * 50 + 12 / 8 * 50), rel=0.1)  # the hot primary's calls per check
    spread = simulate(costs, Topology(16, 8, buckets=8), concurrency=256, checks=1000, warmup=200)
    assert spread.busiest_primary_share < one.busiest_primary_share - 0.1  # 8 buckets on random primaries: some share one
    assert spread.checks_per_s > 1.6 * one.checks_per_s


def test_open_loop_utilisation_is_rate_times_cost_and_an_overload_queues() -> None:
    costs = Costs(gw_fixed=100.0, gw_batch=0.0, r_call=1.0, slots=2)
    half = simulate(costs, Topology(1, 2, hot=False, rtt_us=0), rate=5_000, checks=2000, warmup=300)
    assert half.gateway_util == pytest.approx(0.5, abs=0.03)
    assert half.p99_ms < 2.0
    over = simulate(costs, Topology(1, 2, hot=False, rtt_us=0), rate=15_000, checks=2000, warmup=300)
    assert over.p99_ms > 50 * half.p99_ms


def test_fit_recovers_the_costs_that_made_the_rows() -> None:
    truth = Costs(gw_fixed=900.0, gw_batch=60.0, r_call=40.0, r_batch=30.0, replica_call=12.0, client=80.0, slots=9.0, held=0.95)
    rows = []
    for primaries in (1, 3):
        b = batches_per_check(truth, primaries)
        calls = truth.slots + 2 + truth.held * (2 * truth.slots + 1)
        rows.append({"primaries": primaries, "round_trips_per_check": 2 + 2 * truth.held, "calls_per_check": calls,
                     "gateway_us_per_check": truth.gw_fixed + truth.gw_batch * b,
                     "primaries_us_per_check": truth.r_batch * b + truth.r_call * calls,
                     "replicas_us_per_check": truth.replica_call * calls, "load_us_per_check": truth.client})
    got = fit(rows)
    for name in ("gw_fixed", "gw_batch", "r_call", "r_batch", "replica_call", "client", "slots", "held"):
        assert getattr(got, name) == pytest.approx(getattr(truth, name), rel=0.02), name
