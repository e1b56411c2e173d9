"""Typed application keys: what the aiohttp app carries, named once."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.clock import Clock, ManualClock
from gateway.coordinator import Coordinator, RecordSink
from gateway.stats import Stats


@dataclass(slots=True)
class Load:
    """In-flight requests against the bound past which the gateway answers 429."""

    limit: int
    inflight: int = 0
    shed: int = 0


COORDINATOR = web.AppKey("coordinator", Coordinator)
JOURNAL = web.AppKey("journal", RecordSink)
CLOCK = web.AppKey("clock", Clock)
MANUAL_CLOCK = web.AppKey("manual_clock", ManualClock)
ADMIN_TOKEN = web.AppKey("admin_token", str)
LOAD = web.AppKey("load", Load)
STATS = web.AppKey("stats", Stats)
