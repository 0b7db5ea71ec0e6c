"""``fliplet-agent install|uninstall CONFIG``: run a config as a background service.

The original installs a Windows service (node-windows). The natural equivalent on the hosts this
project targets is a systemd unit that runs ``fliplet-agent start CONFIG`` and restarts it if it
dies; one unit per config, named after the config, so any number can run side by side.

The unit runs *this* installation: the Python interpreter running ``install`` (``sys.executable``,
not resolved, so a virtual environment stays a virtual environment) with ``-P -m
fliplet_workers.cli``; ``-P`` keeps a ``fliplet_workers`` folder next to the config from shadowing
the installed package. ``PATH`` may hold another ``fliplet-agent``; the unit never looks it up.
Every path is written with systemd's quoting and ``%`` escaped, so a path with a space, a quote,
``$`` or ``%`` reaches the agent unchanged.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

from fliplet_workers.config import Config

UNIT_TEMPLATE = """\
# Installed by `fliplet-agent install`; remove with `fliplet-agent uninstall {config_arg}`.
[Unit]
Description=Fliplet Agent ({name})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
WorkingDirectory={workdir}
ExecStart={exec_start}
Environment=PYTHONUNBUFFERED=1
Restart=on-failure
RestartSec=30
# Secrets referenced as ${{VAR}} in the config can live in this optional file (mode 600).
EnvironmentFile=-{envfile}

[Install]
WantedBy={wanted_by}
"""


class UnitPathError(ValueError):
    """A path that a unit file cannot hold (a line break in it)."""


def unit_name(config: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", config.stem)
    return f"fliplet-agent-{stem}.service"


def default_unit_dir(system: bool) -> Path:
    if system:
        return Path("/etc/systemd/system")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "systemd" / "user"


def _no_newline(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise UnitPathError(f"a systemd unit cannot hold a path with a line break: {text!r}")
    return text


def escape_specifiers(text: str) -> str:
    """A value for a path setting (``WorkingDirectory=``, ``EnvironmentFile=``): taken literally by
    systemd, spaces included, except ``%`` which starts a specifier."""
    return _no_newline(text).replace("%", "%%")


def quote_arg(text: str) -> str:
    """One ``ExecStart=`` argument in systemd's quoting: double quotes, C-style ``\\`` and ``"``
    escapes, ``%%`` for ``%`` (specifiers) and ``$$`` for ``$`` (environment variable expansion)."""
    text = _no_newline(text).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("%", "%%").replace("$", "$$") + '"'


def command(config: Path) -> list[str]:
    """The argv the service runs: this installation's interpreter, never a ``PATH`` lookup."""
    return [os.path.abspath(sys.executable), "-P", "-m", "fliplet_workers.cli", "start", str(config)]


def render(config: Path, system: bool) -> str:
    """The unit file's text for ``config`` (resolved to an absolute path)."""
    config = config.resolve()
    return UNIT_TEMPLATE.format(
        name=escape_specifiers(config.stem), config_arg=shlex.quote(_no_newline(str(config))),
        workdir=escape_specifiers(str(config.parent)),
        exec_start=" ".join(quote_arg(arg) for arg in command(config)),
        envfile=escape_specifiers(str(config.with_suffix(".env"))),
        wanted_by="multi-user.target" if system else "default.target",
    )


def warnings(config: Config) -> list[str]:
    """What would make the service useless although the config is valid."""
    found = []
    if not any(op.frequency for op in config.operations):
        found.append("no operation has a 'frequency': the service would run the config once and stop "
                     "(Restart=on-failure does not start it again). Add a 'frequency' such as '*/15 * * * *' "
                     "to run it on a schedule.")
    if config.is_dry_run:
        found.append("'is_dry_run' is on: the service would send nothing to Fliplet.")
    return found


def install(config: Path, unit_dir: Path, system: bool) -> Path:
    """Write the unit file and return its path (enabling it is left to ``systemctl``, printed)."""
    text = render(config, system)
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / unit_name(config.resolve())
    path.write_text(text)
    return path


def uninstall(config: Path, unit_dir: Path) -> Path | None:
    path = unit_dir / unit_name(config.resolve())
    if path.exists():
        path.unlink()
        return path
    return None
