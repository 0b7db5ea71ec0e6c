"""Redis locks that expire when their holder dies: one run per operation, one sending beat, one
worker per batch.

A lock is a key holding its owner's id with a time to live. The owner renews it while it lives (the
task steps of a run, and a :func:`kept_alive` thread during long steps); if the owner dies, the key
expires and someone else may take it. Renewal and release compare the owner first, inside Redis (Lua),
so nobody ever extends or deletes a lock that another owner took in the meantime.

``claim`` is re-entrant: the owner of a lock claims it again successfully. That is what lets a task
redelivered after its worker died (same run id) carry on where it stopped.

:class:`RunLock` adds one rule for the operation lock: a run may take a *free* lock back only while
it is still the operation's latest run. A task redelivered long after its run's lock lapsed (the
visibility timeout can outlast the lock) must not send its stale batch after a newer run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis

log = logging.getLogger("fliplet_workers.fleet")

# KEYS[1] = lock, ARGV[1] = owner, ARGV[2] = ttl ms. Take a free lock or extend our own.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Extend only if still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] = lock, KEYS[2] = current run, ARGV = run id, lock ttl ms, current ttl s.
# Start a run: take the lock if free (or ours), and make the run the operation's latest.
_START_RUN = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
  return 1
end
return 0
"""
# Continue a run: keep the lock if ours, or take it back if free and no newer run started since.
_CONTINUE_RUN = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or (holder == false and redis.call('GET', KEYS[2]) == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Delete only if still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass
class Lock:
    """One lock key. ``ttl_ms`` is how long it outlives its owner's last renewal."""

    client: redis.Redis
    key: str
    ttl_ms: int

    def acquire(self, owner: str) -> bool:
        """Take the lock if nobody holds it (not re-entrant)."""
        return bool(self.client.set(self.key, owner, nx=True, px=self.ttl_ms))

    def claim(self, owner: str) -> bool:
        """Take the lock if free, or extend it if ``owner`` holds it already."""
        return bool(self.client.eval(_CLAIM, 1, self.key, owner, self.ttl_ms))

    def renew(self, owner: str) -> bool:
        """Extend the lock if ``owner`` still holds it."""
        return bool(self.client.eval(_RENEW, 1, self.key, owner, self.ttl_ms))

    def release(self, owner: str) -> bool:
        """Delete the lock if ``owner`` still holds it."""
        return bool(self.client.eval(_RELEASE, 1, self.key, owner))

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return None if value is None else str(value)

    def ttl_seconds(self) -> float:
        """Seconds left before the lock expires (0 if it is free)."""
        left = int(self.client.pttl(self.key))
        return max(0.0, left / 1000.0)


@dataclass
class RunLock(Lock):
    """The lock of one operation (``fleet:lock:<config>:<op>``), aware of the operation's latest run."""

    current_key: str = ""
    current_ttl_s: int = 86400

    def start(self, run_id: str) -> bool:
        """Begin run ``run_id`` (or re-enter it): False if another run holds the operation."""
        return bool(self.client.eval(_START_RUN, 2, self.key, self.current_key, run_id, self.ttl_ms,
                                     self.current_ttl_s))

    def carry_on(self, run_id: str) -> bool:
        """For every later step of the run: False if the run was superseded."""
        return bool(self.client.eval(_CONTINUE_RUN, 2, self.key, self.current_key, run_id, self.ttl_ms))

    def latest(self) -> str | None:
        value = self.client.get(self.current_key)
        return None if value is None else str(value)


@contextlib.contextmanager
def kept_alive(renewals: list[Callable[[], bool]], every: float, what: str = "lock") -> Iterator[threading.Event]:
    """Call each renewal every ``every`` seconds on a background thread while the block runs.

    Yields an event that is set if a renewal returned False (the lock was taken by someone else) so
    that a long step can notice; the step itself is not interrupted (an HTTP request in flight cannot
    be taken back anyway).
    """
    stop = threading.Event()
    lost = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            for renew in renewals:
                try:
                    if not renew() and not lost.is_set():
                        lost.set()
                        log.warning("The %s was taken over by another owner while this step was running.", what)
                except redis.RedisError as error:  # keep trying: the lock may still be ours
                    log.warning("Could not renew the %s: %s", what, error)

    thread = threading.Thread(target=loop, name=f"renew-{what}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join(timeout=5)
