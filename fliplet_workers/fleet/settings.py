"""The fleet's settings, read from the environment once per process.

Everything is an environment variable so that the same image or unit file runs a worker, a beat or
Flower on any host: only ``fleet.env`` differs. Kept apart from :mod:`.app` so that ``fliplet-agent
status`` (and the tests) can reach Redis without importing Celery.

==============================  ==========================  ===========================================
variable                        default                     meaning
==============================  ==========================  ===========================================
FLIPLET_BROKER_URL              redis://127.0.0.1:6379/0    Celery broker
FLIPLET_RESULT_BACKEND          the broker URL              Celery result backend
FLIPLET_REDIS_URL               the broker URL              locks, staged runs, retry state, history
FLIPLET_CONFIG_DIR              ./configs                   directory of config files
FLIPLET_TIMEZONE                the host's local time       time zone of ``frequency`` (a config's own
                                                            ``timezone`` option wins)
FLIPLET_RUN_TTL                 86400                       seconds a run's staged data is kept
FLIPLET_LOCK_TTL                900                         seconds an operation lock lives unrenewed
FLIPLET_LEASE_TTL               60                          seconds a batch lease lives unrenewed
FLIPLET_VISIBILITY_TIMEOUT      3600                        seconds before an unacked task is redelivered
FLIPLET_RESTORE_INTERVAL        60                          seconds between sweeps for such tasks
FLIPLET_TASK_SOFT_TIME_LIMIT    1800                        a task is told to stop after this
FLIPLET_TASK_TIME_LIMIT         2100                        a task is killed after this
FLIPLET_SCHEDULE_RESCAN         30                          seconds between config directory scans
FLIPLET_BEAT_MAX_INTERVAL       5                           longest beat sleep between ticks
FLIPLET_BEAT_LEADER_TTL         30                          seconds a dead beat keeps the leadership
FLIPLET_HISTORY                 20                          run summaries kept per operation
FLIPLET_RECOVER_INTERVAL        15                          seconds between recovery sweeps (beat)
FLIPLET_RECOVER_GRACE           30                          a batch task unseen this long is sent again
FLIPLET_RECOVER_ATTEMPTS        5                           recoveries of a batch before it is failed
FLIPLET_PLANNER_TTL             30                          seconds a dead planner looks alive
==============================  ==========================  ===========================================
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

import redis

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


class SettingsError(ValueError):
    """An environment variable has a value the fleet cannot use."""


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0.001) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


@dataclass(frozen=True)
class FleetSettings:
    broker_url: str = DEFAULT_BROKER
    result_backend: str = DEFAULT_BROKER
    redis_url: str = DEFAULT_BROKER
    config_dir: str = "configs"
    #: ``FLIPLET_TIMEZONE``, else the host's local time; a config's ``timezone`` overrides it
    #: (:func:`fliplet_workers.cron.schedule_timezone`, the foreground agent's rule too).
    timezone: str = "UTC"
    run_ttl: float = 86400.0
    lock_ttl: float = 900.0
    lease_ttl: float = 60.0
    visibility_timeout: float = 3600.0
    restore_interval: float = 60.0
    task_soft_time_limit: float = 1800.0
    task_time_limit: float = 2100.0
    schedule_rescan: float = 30.0
    beat_max_interval: float = 5.0
    leader_ttl: float = 30.0
    history: int = 20
    recover_interval: float = 15.0
    recover_grace: float = 30.0
    recover_attempts: int = 5
    planner_ttl: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FleetSettings:
        env = os.environ if env is None else env
        broker = env.get("FLIPLET_BROKER_URL") or DEFAULT_BROKER
        from fliplet_workers.cron import default_timezone

        timezone = default_timezone(env)
        _check_zone(timezone)
        soft = _number(env, "FLIPLET_TASK_SOFT_TIME_LIMIT", 1800.0, 1)
        hard = _number(env, "FLIPLET_TASK_TIME_LIMIT", max(2100.0, soft + 60), 1)
        if hard <= soft:
            raise SettingsError("FLIPLET_TASK_TIME_LIMIT must be larger than FLIPLET_TASK_SOFT_TIME_LIMIT")
        return cls(
            broker_url=broker,
            result_backend=env.get("FLIPLET_RESULT_BACKEND") or broker,
            redis_url=env.get("FLIPLET_REDIS_URL") or broker,
            config_dir=env.get("FLIPLET_CONFIG_DIR") or "configs",
            timezone=timezone,
            run_ttl=_number(env, "FLIPLET_RUN_TTL", 86400.0, 60),
            lock_ttl=_number(env, "FLIPLET_LOCK_TTL", 900.0, 1),
            lease_ttl=_number(env, "FLIPLET_LEASE_TTL", 60.0, 1),
            visibility_timeout=_number(env, "FLIPLET_VISIBILITY_TIMEOUT", 3600.0, 1),
            restore_interval=_number(env, "FLIPLET_RESTORE_INTERVAL", 60.0, 0.1),
            task_soft_time_limit=soft,
            task_time_limit=hard,
            schedule_rescan=_number(env, "FLIPLET_SCHEDULE_RESCAN", 30.0, 0.1),
            beat_max_interval=_number(env, "FLIPLET_BEAT_MAX_INTERVAL", 5.0, 0.1),
            leader_ttl=_number(env, "FLIPLET_BEAT_LEADER_TTL", 30.0, 1),
            history=int(_number(env, "FLIPLET_HISTORY", 20, 1)),
            recover_interval=_number(env, "FLIPLET_RECOVER_INTERVAL", 15.0, 0.5),
            recover_grace=_number(env, "FLIPLET_RECOVER_GRACE", 30.0, 1),
            recover_attempts=int(_number(env, "FLIPLET_RECOVER_ATTEMPTS", 5, 1)),
            planner_ttl=_number(env, "FLIPLET_PLANNER_TTL", 30.0, 1),
        )

    @property
    def lock_ttl_ms(self) -> int:
        return int(self.lock_ttl * 1000)

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.lease_ttl * 1000)

    @property
    def run_ttl_s(self) -> int:
        return int(self.run_ttl)


def _check_zone(name: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"FLIPLET_TIMEZONE: unknown time zone {name!r}") from None


@functools.cache
def current() -> FleetSettings:
    """This process's settings (read once)."""
    return FleetSettings.from_env()


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30,
                                socket_connect_timeout=5, socket_keepalive=True)


def connect(url: str) -> redis.Redis:
    """One shared client (and connection pool) per URL and process; safe across forks and threads."""
    return _client(url)


def describe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from fliplet_workers.redaction import redact

    return redact(url)

