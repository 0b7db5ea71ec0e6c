"""``fliplet-agent status``: what the fleet would run, when, how the last runs went, what is broken,
which workers answer and how many tasks wait.

It reads the config directory itself (the same scan as beat) and Redis for the rest; with Redis out
of reach it still lists configs, schedules and invalid files, and says that the run history is
unknown. It needs none of the configs' secrets: a config whose ``${NAME}`` is unset here is listed
as "needs NAME" (it is valid where the workers run with that variable), not as invalid.

Exit code (the first that applies): 2 if a setting or a config is invalid (or the directory cannot
be read), 1 if Redis cannot be reached, 3 if the last run of an operation failed, else 0.
``--json`` prints the same facts as one JSON document (``exit_code`` included).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TextIO

import redis

from fliplet_workers.cron import next_run, schedule_timezone
from fliplet_workers.fleet import history, keys, watermarks
from fliplet_workers.fleet.locks import Lock
from fliplet_workers.fleet.registry import ConfigFile, Registry, Scan
from fliplet_workers.fleet.settings import FleetSettings, SettingsError, connect, describe_url

INVALID, UNREACHABLE, LAST_RUN_FAILED = 2, 1, 3
QUEUE = "celery"


def print_status(config_dir: str | None = None, *, out: TextIO | None = None,
                 settings: FleetSettings | None = None, now: Callable[[], datetime] | None = None,
                 as_json: bool = False, ping_timeout: float = 1.0) -> int:
    out = out or sys.stdout
    try:
        settings = settings or FleetSettings.from_env()
    except SettingsError as error:
        if as_json:
            print(json.dumps({"error": f"Invalid fleet setting: {error}", "exit_code": INVALID}), file=out)
        else:
            print(f"Invalid fleet setting: {error}", file=out)
        return INVALID
    if config_dir:
        settings = replace(settings, config_dir=config_dir)
    report = collect(settings, (now or (lambda: datetime.now(UTC)))(), ping_timeout)
    if as_json:
        print(json.dumps(report, indent=2, default=str), file=out)
    else:
        render(report, out)
    return int(report["exit_code"])


# ------------------------------------------------------------------------------------ the facts


def collect(settings: FleetSettings, moment: datetime, ping_timeout: float = 1.0) -> dict[str, Any]:
    """Everything ``status`` shows, as plain data (what ``--json`` prints)."""
    scan = Registry(settings.config_dir).scan()
    client: redis.Redis | None = connect(settings.redis_url)
    problem = None
    try:
        assert client is not None
        client.ping()
    except redis.RedisError as error:
        problem = f"Redis at {describe_url(settings.redis_url)} is not reachable ({error}): last runs unknown."
        client = None
    report: dict[str, Any] = {
        "config_dir": settings.config_dir,
        "timezone": settings.timezone,
        "directory_error": scan.error,
        "redis": {"url": describe_url(settings.redis_url), "reachable": client is not None, "error": problem},
        "beat_leader": Lock(client, keys.BEAT_LEADER, 0).holder() if client is not None else None,
        "workers": _workers(settings, ping_timeout) if client is not None else None,
        "queue": _queue(settings) if client is not None else None,
        "configs": [_config(found, settings, moment, client) for found in scan.files],
    }
    report["exit_code"] = _exit_code(scan, report, client is not None)
    return report


def _config(found: ConfigFile, settings: FleetSettings, moment: datetime, client: redis.Redis | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": found.name, "path": found.path}
    if found.config is None:
        entry.update(state="needs_env" if found.needs else "invalid", needs=list(found.needs),
                     problems=list(found.problems), operations=[])
        return entry
    entry.update(state="ok", needs=[], problems=[], operations=[])
    zone = schedule_timezone(found.config.timezone, settings.timezone)  # the beat's rule
    for index, op in enumerate(found.config.operations):
        item: dict[str, Any] = {"index": index, "label": op.label, "frequency": op.frequency,
                                "next_run": (next_run(op.frequency, moment, zone).isoformat()
                                             if op.frequency else None)}
        if client is not None:
            item["running"] = Lock(client, keys.lock(found.name, index), 0).holder()
            item["last_runs"] = history.last(client, found.name, index, 3)
            if op.incremental:
                item["watermark"] = watermarks.status(client, found.name, index)
        entry["operations"].append(item)
    return entry


def _workers(settings: FleetSettings, timeout: float) -> list[str] | None:
    """The workers that answer a ping (None if the broker cannot be asked)."""
    from fliplet_workers.fleet.app import create_app

    app = create_app(settings)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            replies = app.control.ping(timeout=timeout, connection=conn) or []
    except Exception:  # the broker is down or refuses: shown as unknown
        return None
    finally:
        app.close()
    return sorted(name for reply in replies for name in reply)


def _queue(settings: FleetSettings) -> dict[str, int] | None:
    """Tasks waiting in the broker's queue, and those delivered but not yet acknowledged."""
    try:
        broker = connect(settings.broker_url)
        return {"waiting": int(broker.llen(QUEUE)), "unacked": int(broker.hlen("unacked"))}
    except redis.RedisError:
        return None


def _last_failed(report: dict[str, Any]) -> list[str]:
    out = []
    for config in report["configs"]:
        for op in config["operations"]:
            runs = [r for r in op.get("last_runs") or [] if r.get("skipped") is not True]
            if runs and not runs[0].get("ok", not runs[0].get("errors")):
                out.append(f"{config['name']} operation {op['index']}")
    return out


def _exit_code(scan: Scan, report: dict[str, Any], reachable: bool) -> int:
    if scan.broken or scan.error:
        return INVALID
    if not reachable:
        return UNREACHABLE
    return LAST_RUN_FAILED if _last_failed(report) else 0


# ------------------------------------------------------------------------------------ the text


def render(report: dict[str, Any], out: TextIO) -> None:
    print(f"Config directory: {report['config_dir']}  (time zone {report['timezone']})", file=out)
    if report["directory_error"]:
        print(f"  {report['directory_error']}", file=out)
    if report["redis"]["reachable"]:
        leader = report["beat_leader"]
        print(f"Beat leader: {leader}" if leader else "Beat leader: none (no beat is running)", file=out)
        workers = report["workers"]
        if workers is None:
            print("Workers: unknown (the broker did not answer)", file=out)
        else:
            print(f"Workers answering: {len(workers)}" + (f" ({', '.join(workers)})" if workers else ""), file=out)
        queue = report["queue"]
        if queue is not None:
            print(f"Queue: {queue['waiting']} task(s) waiting, {queue['unacked']} delivered and not yet acknowledged",
                  file=out)
    else:
        print(report["redis"]["error"], file=out)
    print("", file=out)
    valid = [c for c in report["configs"] if c["state"] == "ok"]
    for config in valid:
        for op in config["operations"]:
            print(_operation_line(config["name"], op), file=out)
            if report["redis"]["reachable"]:
                for line in _runtime_lines(op):
                    print(f"    {line}", file=out)
    if not valid:
        print("No valid config.", file=out)
    waiting = [c for c in report["configs"] if c["state"] == "needs_env"]
    if waiting:
        print("", file=out)
        print(f"Configs that need environment variables not set here ({len(waiting)}; fine where they are set):",
              file=out)
        for config in waiting:
            print(f"  {config['name']}: needs {', '.join(config['needs'])}", file=out)
    invalid = [c for c in report["configs"] if c["state"] == "invalid"]
    if invalid:
        print("", file=out)
        print(f"Invalid configs ({len(invalid)}), not scheduled:", file=out)
        for config in invalid:
            problems = config["problems"]
            more = f" (+{len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            print(f"  {config['name']}: {problems[0] if problems else ''}{more}", file=out)
    failed = _last_failed(report)
    if failed:
        print("", file=out)
        print(f"Last run failed: {', '.join(failed)}", file=out)


def _operation_line(name: str, op: dict[str, Any]) -> str:
    if op["frequency"]:
        when = datetime.fromisoformat(op["next_run"]).strftime("%Y-%m-%d %H:%M %Z")
        schedule = f"'{op['frequency']}', next run {when}"
    else:
        schedule = "no frequency (ad-hoc runs only)"
    return f"{name} operation {op['index']} ({op['label']}): {schedule}"


def _runtime_lines(op: dict[str, Any]) -> list[str]:
    lines = []
    if op.get("running"):
        lines.append(f"running now: run {op['running']}")
    if "watermark" in op:
        lines.append(_watermark_line(op["watermark"]))
    last = op.get("last_runs") or []
    if not last:
        lines.append("no run recorded yet")
    for summary in last:
        lines.append(describe(summary))
    return lines


def _watermark_line(mark: dict[str, Any] | None) -> str:
    """An incremental operation's watermark: the next run reads the rows newer than it."""
    if not mark or not mark.get("watermark"):
        return "incremental: no watermark yet (the next run compares every row)"
    typed = mark["watermark"]
    full = f", last full comparison {mark['fullAt']}" if mark.get("fullAt") else ""
    return f"incremental: watermark {typed.get('value')} ({typed.get('type')}){full}"


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
