"""``fliplet-agent metrics``: a Prometheus endpoint for the fleet, read from the run history in Redis.

Every scrape reads the totals that each run's end adds to ``fleet:stats:<config>:<op>`` (see
:mod:`.history`): it keeps no state of its own, so any number of these endpoints, on any host, show
the same numbers, and a restart loses nothing. Labels are ``config`` and ``operation`` (plus
``outcome`` / ``action``): bounded by the config files, never a process id or a host.

=============================================  =======  ===========================================
metric                                         type     labels
=============================================  =======  ===========================================
``fliplet_runs_total``                         counter  config, operation, outcome (ok|failed|dry_run)
``fliplet_rows_total``                         counter  config, operation, action (inserted|updated|
                                                        deleted|skipped|unchanged)
``fliplet_commit_retries_total``               counter  config, operation
``fliplet_file_errors_total``                  counter  config, operation
``fliplet_last_run_duration_seconds``          gauge    config, operation
``fliplet_last_run_timestamp_seconds``         gauge    config, operation
``fliplet_last_run_ok``                        gauge    config, operation (1 ok, 0 failed)
``fliplet_last_success_timestamp_seconds``     gauge    config, operation (absent before a success)
``fliplet_queue_messages``                     gauge    (tasks waiting in the broker's queue)
``fliplet_redis_up``                           gauge    (0: Redis could not be read this scrape)
=============================================  =======  ===========================================

Basic auth, the way Flower's is set: ``FLIPLET_METRICS_BASIC_AUTH=user:password`` (several pairs
separated by commas). Without it the command refuses to start unless ``--no-auth`` says so.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fliplet_workers.fleet import history
from fliplet_workers.fleet.settings import FleetSettings, SettingsError, connect

log = logging.getLogger("fliplet_workers.fleet")

AUTH_ENV = "FLIPLET_METRICS_BASIC_AUTH"
QUEUE = "celery"  # the default queue; kombu keeps its messages in a Redis list of that name
ROWS = ("inserted", "updated", "deleted", "skipped", "unchanged")


class FleetCollector(Collector):
    """Reads Redis at every scrape (a few commands per operation)."""

    def __init__(self, client: redis.Redis, broker: redis.Redis | None = None) -> None:
        self.client = client
        self.broker = broker or client

    def collect(self) -> Iterator[Metric]:
        labels = ["config", "operation"]
        runs = CounterMetricFamily("fliplet_runs", "Runs that ended, by outcome.", labels=[*labels, "outcome"])
        rows = CounterMetricFamily("fliplet_rows", "Rows by what the runs did with them (dry runs excluded).",
                                   labels=[*labels, "action"])
        retries = CounterMetricFamily("fliplet_commit_retries", "Commit requests sent again after a failed "
                                      "attempt.", labels=labels)
        files = CounterMetricFamily("fliplet_file_errors", "Files that could not be read or uploaded.", labels=labels)
        duration = GaugeMetricFamily("fliplet_last_run_duration_seconds", "Duration of the last run.", labels=labels)
        ended = GaugeMetricFamily("fliplet_last_run_timestamp_seconds", "When the last run ended (Unix time).",
                                  labels=labels)
        last_ok = GaugeMetricFamily("fliplet_last_run_ok", "1 if the last run ended ok, 0 if it failed.", labels=labels)
        success = GaugeMetricFamily("fliplet_last_success_timestamp_seconds",
                                    "When the last successful run ended (Unix time).", labels=labels)
        up = GaugeMetricFamily("fliplet_redis_up", "1 if the run history could be read from Redis.")
        queue = GaugeMetricFamily("fliplet_queue_messages", "Tasks waiting in the broker's queue.")
        try:
            found = list(history.stats(self.client))
            waiting = int(self.broker.llen(QUEUE))
        except redis.RedisError as error:
            log.warning(f"metrics: Redis cannot be read ({type(error).__name__})")
            up.add_metric([], 0)
            yield up
            return
        for config, op, fields in found:
            at = [config, str(op)]
            for outcome in history.OUTCOMES:
                runs.add_metric([*at, outcome], fields.get(f"runs_{outcome}", 0.0))
            for action in ROWS:
                rows.add_metric([*at, action], fields.get(action, 0.0))
            retries.add_metric(at, fields.get("retries", 0.0))
            files.add_metric(at, fields.get("file_errors", 0.0))
            if "last_finished" in fields:
                duration.add_metric(at, fields.get("last_seconds", 0.0))
                ended.add_metric(at, fields["last_finished"])
                last_ok.add_metric(at, fields.get("last_ok", 0.0))
            if "last_success" in fields:
                success.add_metric(at, fields["last_success"])
        up.add_metric([], 1)
        queue.add_metric([], waiting)
        yield from (runs, rows, retries, files, duration, ended, last_ok, success, up, queue)


def parse_basic_auth(value: str) -> list[tuple[str, str]]:
    """``user:password[,user2:password2]`` (Flower's ``FLOWER_BASIC_AUTH`` format)."""
    pairs = []
    for item in value.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise SettingsError(f"{AUTH_ENV} must be user:password (several separated by commas)")
        pairs.append((user, password))
    return pairs


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def with_basic_auth(app: WSGIApp, users: list[tuple[str, str]]) -> WSGIApp:
    """Answer 401 unless the request carries one of ``users``' credentials (compared in constant time)."""
    expected = [f"{u}:{p}".encode() for u, p in users]

    def allowed(header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return any(hmac.compare_digest(given, e) for e in expected)

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not allowed(str(environ.get("HTTP_AUTHORIZATION", ""))):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="fliplet metrics"'),
                                                ("Content-Type", "text/plain")])
            return [b"Authentication required\n"]
        return app(environ, start_response)

    return guarded


def build_app(settings: FleetSettings, users: list[tuple[str, str]] | None) -> WSGIApp:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(connect(settings.redis_url), connect(settings.broker_url)))
    app: WSGIApp = make_wsgi_app(registry)
    return with_basic_auth(app, users) if users is not None else app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def serve(port: int, address: str = "127.0.0.1", *, no_auth: bool = False,
          environ: Mapping[str, str] | None = None) -> int:
    """Serve ``/metrics`` (any path) until interrupted. Exit code 2 on a bad setting."""
    env = os.environ if environ is None else environ
    try:
        settings = FleetSettings.from_env(env)
        raw = env.get(AUTH_ENV, "").strip()
        users = parse_basic_auth(raw) if raw else None
    except SettingsError as error:
        print(f"Invalid fleet setting: {error}")
        return 2
    if users is None and not no_auth:
        print(f"Set {AUTH_ENV}=user:password (as for Flower's FLOWER_BASIC_AUTH), or pass --no-auth to serve "
              "the metrics to anyone who can reach the port.")
        return 2
    server = make_server(address, port, build_app(settings, users), server_class=_Server, handler_class=_QuietHandler)
    print(f"Serving fleet metrics on http://{address}:{server.server_port}/metrics"
          + ("" if users else " (no authentication)"), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
