"""``fliplet-agent install|uninstall CONFIG``: run a config as a background service.

The original installs a Windows service (node-windows). The natural equivalent on the hosts this
project targets is a systemd unit that runs ``fliplet-agent start CONFIG`` and restarts it if it
dies; one unit per config, named after the config, so any number can run side by side.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

UNIT_TEMPLATE = """\
# Installed by `fliplet-agent install`; remove with `fliplet-agent uninstall {config}`.
[Unit]
Description=Fliplet Agent ({name})
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
WorkingDirectory={workdir}
ExecStart={executable} start {config}
Restart=on-failure
RestartSec=30
# Secrets referenced as ${{VAR}} in the config can live in this optional file (mode 600).
EnvironmentFile=-{envfile}

[Install]
WantedBy={wanted_by}
"""


def unit_name(config: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", config.stem)
    return f"fliplet-agent-{stem}.service"


def default_unit_dir(system: bool) -> Path:
    if system:
        return Path("/etc/systemd/system")
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "systemd" / "user"


def _executable() -> str:
    found = shutil.which("fliplet-agent")
    return found or f"{sys.executable} -m fliplet_workers.cli"


def install(config: Path, unit_dir: Path, system: bool) -> Path:
    """Write the unit file and return its path (enabling it is left to ``systemctl``, printed)."""
    config = config.resolve()
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / unit_name(config)
    path.write_text(UNIT_TEMPLATE.format(
        name=config.stem, config=config, workdir=config.parent, executable=_executable(),
        envfile=config.with_suffix(".env"), wanted_by="multi-user.target" if system else "default.target",
    ))
    return path


def uninstall(config: Path, unit_dir: Path) -> Path | None:
    path = unit_dir / unit_name(config.resolve())
    if path.exists():
        path.unlink()
        return path
    return None
