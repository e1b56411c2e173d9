"""Counters the hot path bumps: plain ints, read by `metrics` and the console at scrape time.

The decision figures (decisions, reasons, shadow hits, top refused) are the sale's, not the
process's: `decisions.DecisionLog.restore` rebuilds them at start from the decision log, and keeps
them in its checkpoint (`Figures`) so that a start reads at most the log written since. The latency
histogram and the repeat count are not in the log and restart from zero."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from rules.subjects import region_parts
from domain.schema import CheckRequest, CheckResponse
from domain.types import Decision, Reason

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The refused users and addresses are heavy hitters kept in bounded counters: past TOP_CAP keys the
# counter is cut back to its TOP_KEEP most common, so a flood of one-off ids costs bounded memory
# (a key cut away starts again from zero; the ones that matter, repeated, stay on top).
TOP_CAP = 10_000
TOP_KEEP = 1_000


def region_path(req: CheckRequest) -> str | None:
    """The order's folded region path (province/city/district/town), as address blacklists match it."""
    address = req.receiver.address if req.receiver is not None else None
    if address is None:
        return None
    return "/".join(region_parts(address)) or None


def _bump(counter: Counter[str], value: str) -> None:
    counter[value] += 1
    if len(counter) > TOP_CAP:
        kept = counter.most_common(TOP_KEEP)
        counter.clear()
        counter.update(dict(kept))


class Figures(msgspec.Struct, kw_only=True):
    """The figures the decision log can rebuild, as its checkpoint keeps them."""

    decisions: dict[str, int] = {}
    reasons: dict[str, int] = {}
    shadow: dict[str, int] = {}
    refused_users: dict[str, int] = {}
    refused_addresses: dict[str, int] = {}


@dataclass(slots=True)
class Stats:
    decisions: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    shadow: Counter[str] = field(default_factory=Counter)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)  # 5xx answers by error code
    refused_users: Counter[str] = field(default_factory=Counter)
    refused_addresses: Counter[str] = field(default_factory=Counter)
    repeats: int = 0  # checks of an order already answered, answered again and counted nowhere else

    def observe_check(self, response: CheckResponse, seconds: float, request: CheckRequest | None = None) -> None:
        self.count(response.decision, response.reasons, response.shadow)
        if request is not None and response.decision is Decision.DENY:
            self.observe_refusal(request.user_id, region_path(request))
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def count(self, decision: Decision, reasons: list[Reason], shadow: list[Reason]) -> None:
        """A check's decision, its reasons and the shadow rules it hit: as it is answered, and as
        the decision log gives it back at start."""
        self.decisions[decision.value] += 1
        for r in reasons:
            self.reasons[r.code.value] += 1
        for r in shadow:
            self.shadow[r.rule_id or ""] += 1

    def observe_refusal(self, user_id: str, path: str | None) -> None:
        """A denied check: count its user and its region path (for the console's top refused)."""
        _bump(self.refused_users, user_id)
        if path is not None:
            _bump(self.refused_addresses, path)

    def top_refused(self, n: int = 10) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """The n most refused users and region paths, most refused first."""
        return self.refused_users.most_common(n), self.refused_addresses.most_common(n)

    def figures(self) -> Figures:
        return Figures(
            decisions=dict(self.decisions),
            reasons=dict(self.reasons),
            shadow=dict(self.shadow),
            refused_users=dict(self.refused_users),
            refused_addresses=dict(self.refused_addresses),
        )

    def add(self, figures: Figures) -> None:
        self.decisions.update(figures.decisions)
        self.reasons.update(figures.reasons)
        self.shadow.update(figures.shadow)
        self.refused_users.update(figures.refused_users)
        self.refused_addresses.update(figures.refused_addresses)
