"""What every fleet step needs: the settings, the Redis client and the config registry.

One :class:`Fleet` per process (:func:`current`), built from the environment; tests build their own
with :meth:`Fleet.create` to point at their Redis and config directory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis

from fliplet_workers.fleet import keys
from fliplet_workers.fleet.locks import Lock, RunLock
from fliplet_workers.fleet.registry import Registry
from fliplet_workers.fleet.settings import FleetSettings, connect
from fliplet_workers.fleet.staging import RunStore
from fliplet_workers.fleet.state import BatchState


@dataclass
class Fleet:
    settings: FleetSettings
    redis: redis.Redis
    registry: Registry

    @classmethod
    def create(cls, settings: FleetSettings) -> Fleet:
        return cls(settings, connect(settings.redis_url), Registry(settings.config_dir))

    def run_lock(self, config: str, operation: int) -> RunLock:
        return RunLock(self.redis, keys.lock(config, operation), self.settings.lock_ttl_ms,
                       keys.current(config, operation), self.settings.run_ttl_s)

    def store(self, run_id: str) -> RunStore:
        return RunStore(self.redis, run_id, self.settings.run_ttl_s, self.settings.lease_ttl_ms)

    def planner(self, run_id: str) -> Lock:
        """The planning task's heartbeat: held (and renewed) while a task plans the run."""
        return Lock(self.redis, keys.planner(run_id), int(self.settings.planner_ttl * 1000))

    def batch_state(self, run_id: str, number: int) -> BatchState:
        return BatchState(self.redis, run_id, number, self.settings.run_ttl_s, self.settings.lease_ttl_ms)

    @property
    def renew_every(self) -> float:
        """How often long steps renew their locks: well within the shortest time to live."""
        return max(0.2, min(self.settings.lock_ttl, self.settings.lease_ttl, self.settings.planner_ttl) / 3)


@functools.cache
def current() -> Fleet:
    from fliplet_workers.fleet.settings import current as current_settings

    return Fleet.create(current_settings())
