"""``fliplet-agent``: the foreground agent, config validation, the sandbox and fleet status.

Errors are caught here, once: each typed :class:`~fliplet_workers.errors.AgentError` is logged with
the original's wording and mapped to an exit code (2 for config errors, 1 for failed syncs).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fliplet_workers import __version__, logs
from fliplet_workers.config import Config, load_config
from fliplet_workers.core.summary import RunSummary
from fliplet_workers.errors import AgentError, ConfigError
from fliplet_workers.redaction import redact


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fliplet-agent",
        description="Synchronize data to and from Fliplet servers (a drop-in for the Fliplet Agent).",
    )
    parser.add_argument("-V", "--version", action="version", version=f"fliplet-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    _agent_commands(sub)
    _fleet_commands(sub)
    return parser


def _agent_commands(sub: Any) -> None:
    """The foreground agent's commands (the original's, plus sandbox, install and demo)."""
    start = sub.add_parser("start", help="Start the agent in foreground mode.")
    start.add_argument("config", help="path/to/config.yml (or a Python code config .py)")
    start.add_argument("--test", action="store_true",
                       help="dry run: print what would be sent to Fliplet, send nothing, exit")
    start.add_argument("--full", action="store_true",
                       help="incremental operations compare every row on this start's first run")
    start.set_defaults(handler=cmd_start)

    validate = sub.add_parser("validate", help="Check a config file and report every problem in it.")
    validate.add_argument("config")
    validate.set_defaults(handler=cmd_validate)

    sandbox = sub.add_parser("sandbox", help="Run a local Fliplet-compatible API server (offline rehearsals).")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument("--data", default=None, help="JSON file holding the sandbox state (kept across runs)")
    sandbox.set_defaults(handler=cmd_sandbox)

    install = sub.add_parser("install", help="Install a config to run as a background service (systemd).")
    install.add_argument("config")
    install.add_argument("--system", action="store_true", help="a system unit (root) instead of a user unit")
    install.add_argument("--unit-dir", default=None, help="where to write the unit (default: systemd's)")
    install.add_argument("--print", action="store_true", dest="print_only",
                         help="print the unit to standard output instead of writing it")
    install.set_defaults(handler=cmd_install)

    uninstall = sub.add_parser("uninstall", help="Remove the background service of a config.")
    uninstall.add_argument("config")
    uninstall.add_argument("--system", action="store_true")
    uninstall.add_argument("--unit-dir", default=None)
    uninstall.set_defaults(handler=cmd_uninstall)

    demo = sub.add_parser("demo", help="Run configs/demo.yml end to end against a local sandbox (offline).")
    demo.add_argument("--config", default="configs/demo.yml")
    demo.set_defaults(handler=cmd_demo)


def _fleet_commands(sub: Any) -> None:
    """The fleet's read-only commands (they read Redis and the config directory)."""
    status = sub.add_parser("status", help="Fleet: list configs, their next run, last runs and invalid configs.")
    status.add_argument("--configs", default=None, help="config directory (default: $FLIPLET_CONFIG_DIR or ./configs)")
    status.add_argument("--json", action="store_true", help="print one JSON document (same facts, same exit code)")
    status.set_defaults(handler=cmd_status)

    metrics = sub.add_parser("metrics", help="Fleet: serve Prometheus metrics read from the run history in Redis.")
    metrics.add_argument("--port", type=int, default=9808)
    metrics.add_argument("--address", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    metrics.add_argument("--no-auth", action="store_true",
                         help="serve without FLIPLET_METRICS_BASIC_AUTH (anyone reaching the port can read)")
    metrics.set_defaults(handler=cmd_metrics)


def _load(path: str, *, log_errors: bool = True) -> Config | None:
    """The config, or None after reporting why not: as a critical log line (terminal and the log
    file, like every other failure of a run), or only on the terminal for ``validate``."""
    try:
        return load_config(path)
    except ConfigError as error:
        if not log_errors:
            print(error.log_text(), file=sys.stderr)
            return None
        from pathlib import Path

        logs.setup("critical")  # the config's own verbosity is unknown; critical lines always show
        logs.for_config(Path(path).stem).critical(redact(error.log_text()))
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    config = _load(args.config, log_errors=False)
    if config is None:
        return ConfigError.exit_code
    print(f"{args.config}: OK ({len(config.operations)} operation(s))")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return ConfigError.exit_code
    logs.setup(config.log_verbosity)
    log = logs.for_config(config.name)
    log.info("Agent started successfully. Press Ctrl+C to quit.")
    dry_run = args.test or config.is_dry_run
    scheduled = [op for op in config.operations if op.frequency]
    if dry_run or not scheduled:
        ok = _run_once(config, dry_run, full=args.full)
        if dry_run:
            log.info("Dry run finished. Aborting process.")
        return 0 if ok else 1
    return _run_scheduled(config, full=args.full)


def _run_once(config: Config, dry_run: bool, indexes: Sequence[int] | None = None, *, full: bool = False) -> bool:
    from fliplet_workers.alerts import foreground_runs_ended
    from fliplet_workers.pipeline.agent import run_config

    log = logs.for_config(config.name)
    try:
        summaries = run_config(config, dry_run=dry_run, log=log, only=indexes, progress=_progress_bar(), full=full)
    except AgentError as error:
        log.critical(redact(error.log_text()))
        if not (dry_run or config.is_dry_run):
            foreground_runs_ended(config, _failed(config, indexes, redact(error.log_text())))
        return False
    except Exception as error:  # an unexpected bug: report it without secrets, keep the agent alive
        text = f"There was an error running your config file. {type(error).__name__}: {redact(str(error))}"
        log.critical(text)
        if not (dry_run or config.is_dry_run):
            foreground_runs_ended(config, _failed(config, indexes, text))
        return False
    for summary in summaries:
        _print_summary(summary)
    foreground_runs_ended(config, summaries)  # alerts: a failed run, or the first ok run after one
    return all(s.ok for s in summaries)


def _failed(config: Config, indexes: Sequence[int] | None, error: str) -> list[RunSummary]:
    """The summaries of operations that a failure stopped before they could make their own."""
    chosen = range(len(config.operations)) if indexes is None else indexes
    return [RunSummary(config=config.name, operation=i, ok=False, errors=[error]) for i in chosen]


def _progress_bar() -> Callable[[], TerminalProgress] | None:
    """The progress display, only when stderr (where it is drawn) is a terminal: never in a log
    file, a pipe or CI."""
    if not sys.stderr.isatty():
        return None
    return TerminalProgress


class TerminalProgress:
    """One line on the terminal for one push: source rows read and judged, out of the number of
    remote entries (the best guess of the total; exceeded, it grows), with rows/s and an ETA, and
    the batches committed out of those cut so far. While it is shown, log lines reach the terminal
    through tqdm's ``external_write_mode`` (:func:`logs.terminal_guard`): the line is lifted, the
    log lines written, the line redrawn below them, so nothing is glued onto it. (A single line: a
    second tqdm bar moves the cursor between lines, which did garble log lines.)
    Implements :class:`fliplet_workers.pipeline.plan.Progress`."""

    def __init__(self) -> None:
        from contextlib import ExitStack

        from tqdm import tqdm

        self.cut_batches = 0
        self.committed_batches = 0
        self._stack = ExitStack()
        self._stack.enter_context(logs.terminal_guard(lambda stream: tqdm.external_write_mode(file=stream)))
        self.bar = tqdm(desc="Rows judged", unit=" rows", unit_scale=True, leave=False, file=sys.stderr,
                        dynamic_ncols=True, postfix=self._batches())

    def _batches(self) -> str:
        return f"batches committed {self.committed_batches}/{self.cut_batches}"

    def expect(self, remote_entries: int) -> None:
        if remote_entries:
            self.bar.total = remote_entries
            self.bar.refresh()

    def rows(self, judged: int) -> None:
        bar = self.bar
        if bar.total is not None and judged > bar.total:
            bar.total = judged  # more rows than remote entries: the guess was low
        bar.update(judged - bar.n)

    def cut(self) -> None:
        self.cut_batches += 1
        self.bar.set_postfix_str(self._batches(), refresh=False)

    def committed(self) -> None:
        self.committed_batches += 1
        self.bar.set_postfix_str(self._batches(), refresh=False)
        self.bar.update(0)  # redrawn at most every tqdm.mininterval

    def close(self) -> None:
        self.bar.close()
        self._stack.close()


def _print_summary(summary: RunSummary) -> None:
    """One human line per operation on stderr (the log has the details)."""
    tail = " (dry run: nothing was sent)" if summary.dry_run else ""
    print(f"{summary.config} operation {summary.operation + 1}: inserted {summary.inserted}, "
          f"updated {summary.updated}, deleted {summary.deleted}, unchanged {summary.unchanged}, "
          f"skipped {summary.skipped}, errors {len(summary.errors)}"
          + (f", file errors {summary.file_errors}" if summary.file_errors else "")
          + f" in {summary.seconds:.2f}s{tail}",
          file=sys.stderr)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_scheduled(config: Config, *, full: bool = False) -> int:
    """Keep running each operation on its cron ``frequency`` until interrupted (Ctrl+C, SIGTERM).
    ``full`` (``--full``): each operation's first run compares every row."""
    from fliplet_workers.cron import schedule_timezone
    from fliplet_workers.foreground import describe_schedule, run_forever, utc_now

    log = logs.for_config(config.name)
    pending_full = set(range(len(config.operations))) if full else set()

    def run(due: Sequence[int] | None) -> bool:
        chosen = set(range(len(config.operations)) if due is None else due)
        now_full = bool(chosen & pending_full)
        pending_full.difference_update(chosen)
        return _run_once(config, False, due, full=now_full)

    if config.sync_on_init:
        run(None)
    frequencies = {i: str(op.frequency) for i, op in enumerate(config.operations) if op.frequency}
    zone = schedule_timezone(config.timezone)  # the config's, else FLIPLET_TIMEZONE, else the host's
    log.info(f"Scheduling {len(frequencies)} operation(s) to run with their set frequency...")
    for line in describe_schedule(frequencies, zone, utc_now()):
        log.info(line)
    log.info("Scheduling complete. Keep this process alive and you're good to go!")
    signal.signal(signal.SIGTERM, _stop)
    try:
        run_forever(frequencies, run, tz=zone)
    except KeyboardInterrupt:
        log.info("Agent stopped.")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from fliplet_workers.sandbox.server import serve_forever

    serve_forever(args.host, args.port, args.data)
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fliplet_workers import service

    config = _load(args.config)
    if config is None:  # never install a config that cannot run
        return ConfigError.exit_code
    for warning in service.warnings(config):
        print(f"Warning: {args.config}: {warning}", file=sys.stderr)
    try:
        if args.print_only:
            print(service.render(Path(args.config), args.system), end="")
            return 0
        unit_dir = Path(args.unit_dir) if args.unit_dir else service.default_unit_dir(args.system)
        path = service.install(Path(args.config), unit_dir, args.system)
    except service.UnitPathError as error:
        print(f"Cannot install {args.config}: {error}", file=sys.stderr)
        return ConfigError.exit_code
    scope = "" if args.system else "--user "
    print(f"Installed {path}.\nStart it now and at boot with: systemctl {scope}daemon-reload && "
          f"systemctl {scope}enable --now {path.name}\nFollow its output with: journalctl {scope}-u {path.name} -f")
    if not args.system:
        print("A user service keeps running after logout only with: loginctl enable-linger $USER")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fliplet_workers import service

    unit_dir = Path(args.unit_dir) if args.unit_dir else service.default_unit_dir(args.system)
    name = service.unit_name(Path(args.config).resolve())
    scope = "" if args.system else "--user "
    print(f"Stop it first with: systemctl {scope}disable --now {name}")
    removed = service.uninstall(Path(args.config), unit_dir)
    print(f"Removed {removed}." if removed else f"No service {name} is installed in {unit_dir}.")
    return 0 if removed else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from fliplet_workers.demo import main as demo

    return demo(args.config)


def cmd_status(args: argparse.Namespace) -> int:
    from fliplet_workers.fleet.status import print_status

    return print_status(args.configs, as_json=args.json)


def cmd_metrics(args: argparse.Namespace) -> int:
    from fliplet_workers.fleet.metrics import serve

    return serve(args.port, args.address, no_auth=args.no_auth)


if __name__ == "__main__":
    sys.exit(main())
