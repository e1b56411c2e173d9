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
    """An activity's budget counters live in its buckets' slots: another number of buckets would
    strand what they hold (and let the budget be passed), so it is fixed while the activity exists."""
    errors = [
        f"activities.{aid}.buckets: cannot change from {old.activities[aid].buckets} to {activity.buckets} while the activity "
        "exists (its budget counters live in those buckets); give the new split to a new activity"
        for aid, activity in new.activities.items()
        if aid in old.activities and activity.buckets != old.activities[aid].buckets
    ]
    if errors:
        raise ConfigError(errors)
