"""The configuration in Redis: one document every gateway serves, changed through any of them.

The document and its version share a slot; a change is read-modify-write, set only if the version
is still the one it was made from (`fg_config_set`), so two operators' changes through two gateways
never overwrite each other. Each gateway looks at the version every `POLL` seconds and loads a
new document when it moved: a change holds on every gateway within `POLL` seconds and a round trip.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from actors.ledger import Ledger
from cluster.connection import Redis, RedisDown
from cluster.keys import CONFIG_KEYS
from cluster.partition import buckets
from rules.changes import apply_change
from domain.config import Config
from domain.document import ConfigError, build_config
from domain.types import Record

log = logging.getLogger("flashguard.cluster")

POLL = 0.2


class ConfigStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.config = Config()
        self.version = 0

    async def start(self, seed: Config, reload_config: bool) -> str:
        """Seed an empty store with `seed`, or take the stored document (SPEC section 7's rules);
        with `reload_config` apply `seed` over it. Returns what happened, for the log."""
        if not await self.refresh():
            if await self._set(seed, 0):
                return "configuration store seeded with the start-up configuration"
            await self.refresh()  # another gateway seeded it first
        if reload_config:
            await self.change(("config", seed.to_doc(secrets=True)))
            return "start-up configuration applied over the stored one (--reload-config)"
        return "the configuration stored in Redis stands"

    async def refresh(self) -> bool:
        """Load the stored document if its version moved; False when the store has none."""
        raw = await self.redis.get(CONFIG_KEYS[1])
        if raw is None:
            return False
        version = int(raw)
        if version != self.version:
            doc = await self.redis.get(CONFIG_KEYS[0])
            if doc is None:
                return False
            self.config = build_config(msgspec.msgpack.decode(doc))
            self.version = version
        return True

    async def change(self, record: Record) -> Config:
        """Apply an admin record to the newest document and store it; retried on a lost race."""
        while True:
            base = build_config(self.config.to_doc(secrets=True))  # a copy: the live one stays as it is
            new = apply_change(base, Ledger(), record)  # pardons are the caller's (they live in Redis)
            _keep_buckets(self.config, new)
            if await self._set(new, self.version):
                return new
            if not await self.refresh():  # emptied under us: Redis lost its data; never reseed silently
                raise RedisDown("the configuration store in Redis is empty (was Redis restarted without its data?)")

    async def admin_token(self, token: str) -> str:
        """`token` as the admin token unless the stored configuration has one: compare-and-set on
        the newest document, so of gateways starting together on an empty store exactly one's
        token stands, and the others learn it."""
        while True:
            await self.refresh()
            if self.config.settings.admin_token:
                return self.config.settings.admin_token
            base = build_config(self.config.to_doc(secrets=True))
            settings = msgspec.to_builtins(base.settings)
            if await self._set(apply_change(base, Ledger(), ("settings", {**settings, "admin_token": token})), self.version):
                return token

    async def _set(self, cfg: Config, expected: int) -> bool:
        answer = await self.redis.call(
            "fg_config_set", CONFIG_KEYS, (expected, msgspec.msgpack.encode(cfg.to_doc(secrets=True)))
        )
        if answer[0] != b"ok":
            return False
        self.config, self.version = cfg, int(answer[1])
        return True

    async def poll(self) -> None:
        """The task that keeps this gateway's configuration current."""
        while True:
            await asyncio.sleep(POLL)
            try:
                await self.refresh()
            except RedisDown as e:
                log.warning("configuration poll: %s", e)
            except Exception:
                log.exception("configuration poll failed")


def _keep_buckets(old: Config, new: Config) -> None:
    """A split activity's counters live in its buckets' slots, each guarded by its part of the
    budget. Another number of buckets (budget set or dropped included) would strand what they hold
    and let the budget be passed; a lower budget would shrink every part while some buckets have
    already used more than their new one. Both are refused while the activity exists. (A higher
    budget is safe: no part shrinks.)"""
    errors = []
    for aid, activity in new.activities.items():
        before = old.activities.get(aid)
        if before is None:
            continue
        if buckets(activity) != buckets(before):
            errors.append(
                f"activities.{aid}.buckets: cannot go from {buckets(before)} to {buckets(activity)} split budget slots while the "
                "activity exists (its counters live in those slots); give the new split to a new activity"
            )
        elif buckets(activity) > 1 and (activity.budget or 0) < (before.budget or 0):
            errors.append(
                f"activities.{aid}.budget: a budget split over {buckets(activity)} buckets cannot be lowered (from {before.budget} "
                f"to {activity.budget}): some buckets may already hold more than their new part; end the activity (ends_at) "
                "and go on with a new one"
            )
    if errors:
        raise ConfigError(errors)
