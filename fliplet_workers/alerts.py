"""Alerts: a JSON POST to a webhook when a run fails, and when the next run of that operation recovers.

Where: the config's ``alert_webhook`` and, for the whole fleet (or every foreground agent of a host),
``FLIPLET_ALERT_WEBHOOK``; both get the same message when both are set. The body is Slack-compatible
(``text``) and carries the summary's fields::

    {"text": "...", "event": "failed" | "recovered", "config": "users", "operation": 0, "run_id": "...",
     "ok": false, "dry_run": false, "inserted": 0, "updated": 0, "deleted": 0, "unchanged": 0,
     "skipped": 0, "file_errors": 0, "batches": 0, "errors": ["..."], "seconds": 1.2}

Every failed run alerts (not only the first of a series: a run failing at every tick is worth
hearing about at every tick); a successful run alerts only when the previous run of the operation
failed. Dry runs never alert. The errors are redacted (no token, password or key), at most 10, each
cut to 500 characters. The URL is a secret: it is never logged, and a failed delivery is logged by
its status code or exception type only (a ``requests`` error message names the URL).

Delivery: ``ATTEMPTS`` tries, ``TIMEOUT`` seconds each, with a short backoff; a delivery that fails
every try is logged and given up: an alert never fails a run.

The previous outcome: the fleet reads it from the run history in Redis (and marks each run alerted
once, so a redelivered finalize does not alert twice); the foreground agent keeps it in memory and
in a small JSON file next to its log file (``fliplet-agent.log`` → ``fliplet-agent.alerts.json``),
so one-shot runs from cron know it too. Without a log file (``FLIPLET_AGENT_LOG=-``) only the memory
of a running scheduler knows it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import requests

from fliplet_workers.fliplet.sessions import new_session
from fliplet_workers.redaction import redact

if TYPE_CHECKING:
    from fliplet_workers.config import Config
    from fliplet_workers.core.summary import RunSummary
    from fliplet_workers.fleet.runtime import Fleet

log = logging.getLogger("fliplet_workers.alerts")

ENV = "FLIPLET_ALERT_WEBHOOK"
ATTEMPTS = 3
TIMEOUT = 10.0
BACKOFF = 1.0
MAX_ERRORS = 10
FIELDS = ("config", "operation", "run_id", "ok", "dry_run", "inserted", "updated", "deleted", "unchanged",
          "skipped", "file_errors", "batches", "seconds")

Post = Callable[..., Any]


def event_for(summary: Mapping[str, Any], previous_ok: bool | None) -> str | None:
    """``failed``, ``recovered`` or None (nothing to say) for a run ending with ``summary``."""
    if summary.get("dry_run"):
        return None
    if not summary.get("ok", False):
        return "failed"
    return "recovered" if previous_ok is False else None


def payload(summary: Mapping[str, Any], event: str) -> dict[str, Any]:
    """The JSON body: a Slack ``text`` and the summary's fields (errors redacted), nothing secret."""
    errors = [redact(str(e))[:500] for e in (summary.get("errors") or [])]
    where = f"{summary.get('config', '?')} operation {summary.get('operation', '?')}"
    if event == "failed":
        first = f": {errors[0]}" if errors else ""
        text = f":x: Fliplet sync failed: {where} ({len(errors)} error(s)){first}"
    else:
        text = (f":white_check_mark: Fliplet sync recovered: {where} ran ok (inserted {summary.get('inserted', 0)}, "
                f"updated {summary.get('updated', 0)}, deleted {summary.get('deleted', 0)})")
    body: dict[str, Any] = {"text": text, "event": event}
    body.update({k: summary[k] for k in FIELDS if k in summary})
    body["errors"] = errors[:MAX_ERRORS]
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    return body


def targets(config_hook: str | None, environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    found = [str.__str__(u).strip() for u in (config_hook, env.get(ENV)) if u and str(u).strip()]
    return list(dict.fromkeys(found))


def deliver(url: str, body: Mapping[str, Any], *, attempts: int = ATTEMPTS, timeout: float = TIMEOUT,
            backoff: float = BACKOFF, post: Post | None = None, sleep: Callable[[float], None] = time.sleep) -> bool:
    """POST ``body`` to ``url``; True once answered 2xx. Logs failures without the URL.

    ``post`` (tests) replaces the session's ``post``; by default a session from ``new_session`` (the
    environment's proxies and CA bundle, the agent's User-Agent), closed once delivered or given up.
    """
    if post is None:
        with new_session(pool_size=1) as http:
            return deliver(url, body, attempts=attempts, timeout=timeout, backoff=backoff, post=http.post,
                           sleep=sleep)
    problem = ""
    for attempt in range(1, attempts + 1):
        try:
            answer = post(url, json=dict(body), timeout=timeout)
            if 200 <= answer.status_code < 300:
                return True
            problem = f"HTTP {answer.status_code}"
        except requests.RequestException as error:
            problem = type(error).__name__
        if attempt < attempts:
            sleep(backoff * attempt)
    log.error(f"The {body.get('event', '')} alert for {body.get('config', '?')} operation {body.get('operation', '?')} "
              f"could not be delivered to its webhook after {attempts} attempt(s) (last: {problem}).")
    return False


def notify(hooks: Iterable[str], summary: Mapping[str, Any], previous_ok: bool | None, **kwargs: Any) -> str | None:
    """Send the alert ``summary`` calls for (if any) to every hook; returns the event sent."""
    event = event_for(summary, previous_ok)
    hooks = list(hooks)
    if event is None or not hooks:
        return event
    body = payload(summary, event)
    for url in hooks:
        deliver(url, body, **kwargs)
    return event


# ------------------------------------------------------------------------------------ the fleet


def fleet_run_ended(fleet: Fleet, summary: Mapping[str, Any], **kwargs: Any) -> str | None:
    """Called by the task that ended a run (once its summary is in the history). Never raises."""
    try:
        return _fleet_run_ended(fleet, summary, **kwargs)
    except Exception as error:  # an alert never fails a run
        log.error(f"Alerting failed: {type(error).__name__}: {redact(str(error))}")
        return None


def _fleet_run_ended(fleet: Fleet, summary: Mapping[str, Any], **kwargs: Any) -> str | None:
    from fliplet_workers.errors import ConfigError
    from fliplet_workers.fleet import history, keys

    if summary.get("dry_run") or "ok" not in summary:
        return None
    name, run_id = str(summary.get("config")), str(summary.get("run_id"))
    hook = None
    with contextlib.suppress(ConfigError):  # an unknown or broken config: only the fleet's webhook hears
        hook = fleet.registry.load(name).alert_webhook
    hooks = targets(hook)
    if not hooks:
        return None
    previous_ok = None
    operation = summary.get("operation")
    if isinstance(operation, int):
        earlier = [s for s in history.last(fleet.redis, name, operation, fleet.settings.history)
                   if s.get("run_id") != run_id and not s.get("dry_run")]
        previous_ok = bool(earlier[0].get("ok")) if earlier else None
    if event_for(summary, previous_ok) is None:
        return None
    # Once per run: a redelivered finalize (or sync) reports the same summary again.
    if not fleet.redis.set(keys.run(run_id) + ":alerted", "1", nx=True, ex=fleet.settings.run_ttl_s):
        return None
    return notify(hooks, summary, previous_ok, **kwargs)


# ------------------------------------------------------------------------------------ the foreground agent


class OutcomeMemory:
    """The last outcome of each (config, operation) of the foreground agent: in memory, and in a JSON
    file when one is given (so that a one-shot run knows how the previous one went)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._known: dict[str, bool] = {}
        if path:
            try:
                with open(path, encoding="utf-8") as fh:
                    data = json.load(fh)
                self._known = {str(k): bool(v) for k, v in data.items()} if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._known = {}

    @staticmethod
    def key(config_path: str, operation: int) -> str:
        return f"{os.path.abspath(config_path)}#{operation}"

    def get(self, key: str) -> bool | None:
        return self._known.get(key)

    def set(self, key: str, ok: bool) -> None:
        self._known[key] = ok
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self._known, fh)
            os.replace(tmp, self.path)
        except OSError as error:
            log.warning(f"The alert state file {self.path} cannot be written ({error.strerror}): "
                        "a recovery after this run may go unannounced.")


def state_path(log_file: str | None) -> str | None:
    """``fliplet-agent.log`` → ``fliplet-agent.alerts.json`` (None without a log file)."""
    if not log_file:
        return None
    return os.path.splitext(log_file)[0] + ".alerts.json"


_memory: OutcomeMemory | None = None


def foreground_memory() -> OutcomeMemory:
    """One memory per process (the scheduler's loop keeps it), backed by the file next to the log."""
    global _memory
    from fliplet_workers.logs import log_file_path

    path = state_path(log_file_path())
    if _memory is None or _memory.path != path:
        _memory = OutcomeMemory(path)
    return _memory


def foreground_runs_ended(config: Config, summaries: Iterable[RunSummary], **kwargs: Any) -> list[str | None]:
    """The foreground agent's hook, after each run of a config's operations. Never raises."""
    sent: list[str | None] = []
    try:
        memory = foreground_memory()
        hooks = targets(config.alert_webhook)
        for summary in summaries:
            if summary.dry_run:
                sent.append(None)
                continue
            key = OutcomeMemory.key(config.path, summary.operation)
            previous = memory.get(key)
            sent.append(notify(hooks, summary.to_dict(), previous, **kwargs))
            memory.set(key, summary.ok)
    except Exception as error:  # an alert never fails a run
        log.error(f"Alerting failed: {type(error).__name__}: {redact(str(error))}")
    return sent
