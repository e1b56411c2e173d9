"""`GET /metrics`: Prometheus text format, built at scrape time.

The hot path only bumps plain ints (`stats.Stats`, counted once per tick by the decision log's
`drain`); a custom prometheus-client collector
turns them, and the live state (holds, activity budgets: read from memory, or in cluster mode
from Redis once per scrape), into metric families when Prometheus asks. No lock and no label
lookup is paid per check.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from actors.ledger import Ledger
from cluster.coordinator import ClusterStats
from domain.config import Config
from gateway.keys import DECISIONS, LOAD, SERVICE, STATS, STORE
from gateway.service import ClusterService
from gateway.stats import LATENCY_BUCKETS, Stats
from snapshots.store import Store

routes = web.RouteTableDef()


class GatewayCollector(Collector):
    """The figures of one scrape; what lives in the state was read (awaited) before."""

    def __init__(self, app: web.Application, config: Config, ledger: Ledger, holds: int) -> None:
        self.app, self.config, self.ledger, self.holds = app, config, ledger, holds

    def collect(self) -> Iterator[Metric]:
        stats: Stats = self.app[STATS]
        checks = CounterMetricFamily("flashguard_checks", "Order checks by decision", labels=["decision"])
        for decision, n in sorted(stats.decisions.items()):
            checks.add_metric([decision], n)
        yield checks
        reasons = CounterMetricFamily("flashguard_reasons", "Refusal reasons by code", labels=["code"])
        for code, n in sorted(stats.reasons.items()):
            reasons.add_metric([code], n)
        yield reasons
        shadow = CounterMetricFamily("flashguard_shadow_hits", "Shadow rule hits by rule", labels=["rule_id"])
        for rule_id, n in sorted(stats.shadow.items()):
            shadow.add_metric([rule_id], n)
        yield shadow
        buckets, cumulative = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), stats.latency_counts):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "flashguard_check_seconds", "Time to decide a check, body read to answer", buckets=buckets, sum_value=stats.latency_sum
        )
        yield GaugeMetricFamily(
            "flashguard_live_holds",
            "Orders currently held",
            value=self.holds,
        )
        yield CounterMetricFamily(
            "flashguard_check_repeats",
            "Checks of an order already answered (checkout retries): the first answer again, not in flashguard_checks",
            value=stats.repeats,
        )
        failures = CounterMetricFamily(
            "flashguard_failures", "Requests answered 5xx, by error code (redis_unavailable, contention, disk_unavailable, ...)", labels=["code"]
        )
        for code, n in sorted(stats.failures.items()):
            failures.add_metric([code], n)
        yield failures
        shed = CounterMetricFamily("flashguard_shed", "Requests answered 429 (overloaded)")
        shed.add_metric([], self.app[LOAD].shed)
        yield shed
        yield from _budgets(self.config, self.ledger)
        store = self.app.get(STORE)
        if store is not None:
            yield from _durability(store)
        service = self.app[SERVICE]
        if isinstance(service, ClusterService):
            yield from _cluster(service.coordinator.stats)


def _cluster(stats: ClusterStats) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "flashguard_cluster_contention",
        "Reserve rounds refused by a guard another gateway's check had just used, then given back and decided again",
        value=stats.contention,
    )
    yield CounterMetricFamily(
        "flashguard_cluster_takeovers", "Checks, confirms and cancels of a dead gateway given back or finished here", value=stats.takeovers
    )
    yield CounterMetricFamily("flashguard_cluster_round_trips", "Batches of Function calls sent to Redis", value=stats.round_trips)
    yield CounterMetricFamily("flashguard_cluster_calls", "Function calls sent to Redis", value=stats.calls)
    yield CounterMetricFamily("flashguard_cluster_holds_expired", "Holds this gateway's sweeper counted out at their expiry", value=stats.expired)


def _durability(store: Store) -> Iterator[Metric]:
    journal = store.journal
    if journal is not None:
        yield GaugeMetricFamily("flashguard_journal_lsn", "Last journal record appended", value=journal.lsn)
        yield GaugeMetricFamily("flashguard_journal_durable_lsn", "Last journal record persisted", value=journal.durable)
        fsyncs = CounterMetricFamily("flashguard_journal_flushes", "Journal writes (one per group commit)")
        fsyncs.add_metric([], journal.fsyncs)
        yield fsyncs
        spent = CounterMetricFamily("flashguard_journal_write_seconds", "Time spent in the journal's write and fsync calls")
        spent.add_metric([], journal.write_seconds)
        yield spent
        yield GaugeMetricFamily("flashguard_journal_failed", "1 while the journal cannot write", value=0 if journal.writable() else 1)
    stats = store.stats
    taken = CounterMetricFamily("flashguard_snapshots", "Snapshots written", labels=["outcome"])
    taken.add_metric(["ok"], stats.taken)
    taken.add_metric(["failed"], stats.failed)
    yield taken
    yield GaugeMetricFamily("flashguard_snapshot_seconds", "Time of the last snapshot", value=stats.last_seconds)
    yield GaugeMetricFamily("flashguard_snapshot_fork_pause_seconds", "Event-loop pause to start the last snapshot's process", value=stats.last_fork_pause)


def _budgets(config: Config, ledger: Ledger) -> Iterator[Metric]:
    spent = GaugeMetricFamily("flashguard_activity_spent", "Budget spent by confirmed orders", labels=["activity_id"])
    held = GaugeMetricFamily("flashguard_activity_held", "Budget held by unconfirmed orders", labels=["activity_id"])
    remaining = GaugeMetricFamily("flashguard_activity_remaining", "Budget left", labels=["activity_id"])
    fused = GaugeMetricFamily("flashguard_activity_fused", "1 when the budget is used up", labels=["activity_id"])
    for aid, activity in sorted(config.activities.items()):
        actor = ledger.activities.get(aid)
        s, h = (actor.spent, actor.held) if actor is not None else (0, 0)
        spent.add_metric([aid], s)
        held.add_metric([aid], h)
        if activity.budget is not None:
            remaining.add_metric([aid], max(activity.budget - s - h, 0))
            fused.add_metric([aid], 1 if s + h >= activity.budget else 0)
    yield from (spent, held, remaining, fused)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    request.app[DECISIONS].drain()  # the checks of this tick, counted
    service = request.app[SERVICE]
    config = service.config
    ledger = await service.activity_ledger(sorted(config.activities))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(request.app, config, ledger, await service.live_holds()))
    return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")
