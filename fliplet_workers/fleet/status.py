"""``fliplet-agent status``: what the fleet would run, when, how the last runs went, and what is broken.

It reads the config directory itself (the same scan as beat) and Redis for the rest; with Redis out
of reach it still lists configs, schedules and invalid files, and says that the run history is
unknown. Exit code: 0, or 2 if a config is invalid, or 1 if Redis cannot be reached.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TextIO

import redis

from fliplet_workers.fleet import history, keys
from fliplet_workers.fleet.locks import Lock
from fliplet_workers.fleet.registry import Registry
from fliplet_workers.fleet.settings import FleetSettings, SettingsError, connect, describe_url
from fliplet_workers.schedule import next_run


def print_status(config_dir: str | None = None, *, out: TextIO | None = None,
                 settings: FleetSettings | None = None, now: Callable[[], datetime] | None = None) -> int:
    out = out or sys.stdout
    try:
        settings = settings or FleetSettings.from_env()
    except SettingsError as error:
        print(f"Invalid fleet setting: {error}", file=out)
        return 2
    if config_dir:
        settings = replace(settings, config_dir=config_dir)
    moment = (now or (lambda: datetime.now(UTC)))()
    scan = Registry(settings.config_dir).scan()
    client: redis.Redis | None = connect(settings.redis_url)
    redis_problem = None
    try:
        assert client is not None
        client.ping()
    except redis.RedisError as error:
        redis_problem = f"Redis at {describe_url(settings.redis_url)} is not reachable ({error}): last runs unknown."
        client = None

    print(f"Config directory: {settings.config_dir}  (time zone {settings.timezone})", file=out)
    if scan.error:
        print(f"  {scan.error}", file=out)
    if client is not None:
        leader = Lock(client, keys.BEAT_LEADER, 0).holder()
        print(f"Beat leader: {leader}" if leader else "Beat leader: none (no beat is running)", file=out)
    else:
        print(redis_problem, file=out)
    print("", file=out)
    for found in scan.valid:
        assert found.config is not None
        for index, op in enumerate(found.config.operations):
            print(_operation_line(found.name, index, op.label, op.frequency, settings.timezone, moment), file=out)
            if client is not None:
                for line in _runtime_lines(client, found.name, index):
                    print(f"    {line}", file=out)
    if not scan.valid:
        print("No valid config.", file=out)
    if scan.invalid:
        print("", file=out)
        print(f"Invalid configs ({len(scan.invalid)}), not scheduled:", file=out)
        for bad in scan.invalid:
            more = f" (+{len(bad.problems) - 1} more problem(s))" if len(bad.problems) > 1 else ""
            print(f"  {bad.name}: {bad.problem}{more}", file=out)
    if scan.invalid or scan.error:
        return 2
    return 1 if client is None else 0


def _operation_line(name: str, index: int, label: str, frequency: str | None, tz: str, moment: datetime) -> str:
    if frequency:
        when = next_run(frequency, moment, tz).strftime("%Y-%m-%d %H:%M %Z")
        schedule = f"'{frequency}', next run {when}"
    else:
        schedule = "no frequency (ad-hoc runs only)"
    return f"{name} operation {index} ({label}): {schedule}"


def _runtime_lines(client: redis.Redis, name: str, index: int) -> list[str]:
    lines = []
    holder = Lock(client, keys.lock(name, index), 0).holder()
    if holder:
        lines.append(f"running now: run {holder}")
    last = history.last(client, name, index, 3)
    if not last:
        lines.append("no run recorded yet")
    for summary in last:
        lines.append(describe(summary))
    return lines


def describe(summary: dict[str, Any]) -> str:
    """One line per run summary."""
    if summary.get("skipped") is True:
        return f"skipped: {summary.get('reason', '')}"
    errors = summary.get("errors") or []
    state = "ok" if summary.get("ok", not errors) else "FAILED"
    dry = " (dry run)" if summary.get("dry_run") else ""
    text = (f"{summary.get('finished', '?')} {state}{dry}: inserted {summary.get('inserted', 0)}, "
            f"updated {summary.get('updated', 0)}, deleted {summary.get('deleted', 0)}, "
            f"unchanged {summary.get('unchanged', 0)}, skipped {summary.get('skipped', 0)}, "
            f"errors {len(errors)} in {float(summary.get('seconds', 0)):.1f}s (run {summary.get('run_id', '?')})")
    if errors:
        text += f"; first error: {errors[0]}"
    return text
