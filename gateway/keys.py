"""Typed application keys: what the aiohttp app carries, named once."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from domain.config import Config
from gateway.decisions import DecisionLog
from gateway.service import Service
from gateway.stats import Stats
from node.coordinator import Coordinator
from snapshots.store import Store


@dataclass(slots=True)
class Auth:
    """The admin token. `fixed` (make_app's, or FLASHGUARD_ADMIN_TOKEN) wins; without it the live
    configuration's token is the one, read at each call, so an operator who changes it through
    the admin API locks the old one out at once (not at the next restart)."""

    fixed: str | None = None

    def token(self, config: Config) -> str | None:
        return self.fixed or config.settings.admin_token


@dataclass(slots=True)
class Load:
    """In-flight requests against the bound past which the gateway answers 429."""

    limit: int
    inflight: int = 0
    shed: int = 0


SERVICE = web.AppKey("service", Service)  # the state, in either mode
COORDINATOR = web.AppKey("coordinator", Coordinator)  # single node only
STORE = web.AppKey("store", Store)  # single node with a data directory only
AUTH = web.AppKey("auth", Auth)
LOAD = web.AppKey("load", Load)
STATS = web.AppKey("stats", Stats)
DECISIONS = web.AppKey("decisions", DecisionLog)
