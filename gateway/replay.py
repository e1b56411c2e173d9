"""`flashguard replay --config NEW.toml LOG...`: try a rule change on logged traffic before it goes live.

The decision log holds every check's full request and the gateway's clock. Replay feeds them, with
the confirms and cancels that followed, through an offline coordinator (no HTTP, no journal) on
the new configuration, on a manual clock set to each entry's time, and compares each new decision
with the logged one: which orders would newly be refused, which newly allowed, and by which rules
and reasons.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from domain.clock import ManualClock
from gateway.codec import digest
from domain.config import Config
from node.coordinator import Coordinator
from gateway.decisions import read_log
from domain.errors import ApiError
from domain.schema import CheckRequest, CheckResponse, ClaimRequest


@dataclass(slots=True)
class ReplayReport:
    checks: int = 0
    claims: int = 0
    unchanged: int = 0
    skipped: int = 0  # lines of the files that were not decision-log entries
    changed: Counter[str] = field(default_factory=Counter)  # "allow->deny": n
    newly_refused_by: Counter[str] = field(default_factory=Counter)  # "RISK_RULE:R1": n
    newly_allowed_was: Counter[str] = field(default_factory=Counter)  # the logged reasons that went away
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "checks": self.checks,
            "claims": self.claims,
            "unchanged": self.unchanged,
            "skipped_lines": self.skipped,
            "changed": dict(self.changed),
            "newly_refused_by": dict(self.newly_refused_by.most_common()),
            "newly_allowed_was": dict(self.newly_allowed_was.most_common()),
            "examples": self.examples,
        }


def _label(reason: dict[str, Any]) -> str:
    where = reason.get("rule_id") or reason.get("activity_id") or reason.get("sku_id") or reason.get("spu_id") or ""
    return f"{reason['code']}:{where}" if where else str(reason["code"])


def _compare(report: ReplayReport, entry: dict[str, Any], new: CheckResponse) -> None:
    old_decision = entry["decision"]
    new_decision = new.decision.value
    if old_decision == new_decision:
        report.unchanged += 1
        return
    report.changed[f"{old_decision}->{new_decision}"] += 1
    new_reasons = msgspec.to_builtins(new.reasons)
    if new_decision == "deny":
        for r in new_reasons:
            report.newly_refused_by[_label(r)] += 1
    elif old_decision == "deny":
        for r in entry.get("reasons", []):
            report.newly_allowed_was[_label(r)] += 1
    if len(report.examples) < 20:
        report.examples.append(
            {"order_id": entry.get("order_id"), "user_id": entry.get("user_id"), "was": old_decision, "now": new_decision,
             "reasons_now": new_reasons}
        )


def replay(config: Config, logs: list[Path]) -> ReplayReport:
    """Raises OSError for a log file that cannot be read."""
    entries, skipped = read_log(logs)
    entries.sort(key=lambda e: (e.get("now", 0), e.get("t", 0)))
    clock = ManualClock(entries[0].get("now", 0) if entries else 0)
    coordinator = Coordinator(config, clock)
    report = ReplayReport(skipped=skipped)
    for entry in entries:
        now = entry.get("now")
        if isinstance(now, int) and now > clock.now():
            clock.set(now)
        kind = entry.get("kind")
        try:
            if kind == "check" and "request" in entry:
                req = msgspec.convert(entry["request"], CheckRequest)
                report.checks += 1
                _compare(report, entry, coordinator.check(req, digest(req))[0])
            elif kind == "claim" and "request" in entry:
                report.claims += 1
                _compare(report, entry, coordinator.claim(msgspec.convert(entry["request"], ClaimRequest)))
            elif kind == "confirm":
                coordinator.confirm(entry["order_id"])
            elif kind == "cancel":
                coordinator.cancel(entry["order_id"])
        except (ApiError, msgspec.ValidationError, KeyError):
            continue  # e.g. a confirm of an order the new rules refused: nothing to confirm
    return report


def print_report(report: ReplayReport) -> None:
    """The report for people; `to_json` is the one for programs (`replay --json`)."""
    out = sys.stdout
    out.write(f"replayed {report.checks} checks and {report.claims} claims: {report.unchanged} unchanged\n")
    if report.skipped:
        out.write(f"skipped {report.skipped} lines that are not decision-log entries\n")
    for change, n in report.changed.most_common():
        out.write(f"  {change}: {n}\n")
    if report.newly_refused_by:
        out.write("newly refused, by reason:\n")
        for label, n in report.newly_refused_by.most_common():
            out.write(f"  {label}: {n}\n")
    if report.newly_allowed_was:
        out.write("newly allowed, was refused for:\n")
        for label, n in report.newly_allowed_was.most_common():
            out.write(f"  {label}: {n}\n")
    if report.examples:
        out.write("examples:\n")
        for ex in report.examples:
            reasons = ", ".join(_label(r) for r in ex["reasons_now"])
            out.write(f"  order {ex['order_id']} (user {ex['user_id']}): {ex['was']} -> {ex['now']}")
            out.write(f": {reasons}\n" if reasons else "\n")
