"""``fliplet-agent install`` / ``uninstall``: a systemd unit per config, running this installation,
with every path quoted; ``--print`` shows the unit; a config without ``frequency`` gets a warning.
Every unit written here is also checked by ``systemd-analyze verify``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fliplet_workers import service
from fliplet_workers.cli import main

SCHEDULED = "frequency: '*/5 * * * *'\n"


def write_config(path: Path, extra: str = SCHEDULED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("auth_token: eu--x\ndatasource_id: 1\ndatabase_driver: sqlite\ndatabase_name: x.db\n"
                    "query: SELECT 1\n" + extra)
    return path


def setting(unit: str, key: str) -> str:
    return next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}="))


def systemd_argv(value: str) -> list[str]:
    """``ExecStart=`` as systemd splits it: double-quoted words with ``\\`` escapes, then ``%%`` and
    ``$$`` undone (the test's own reading of the format, cross-checked by systemd-analyze below)."""
    words, i = [], 0
    while i < len(value):
        if value[i] == " ":
            i += 1
            continue
        assert value[i] == '"', f"every word is quoted: {value[i:]!r}"
        i += 1
        word = []
        while value[i] != '"':
            if value[i] == "\\":
                i += 1
            word.append(value[i])
            i += 1
        i += 1
        words.append("".join(word).replace("%%", "%").replace("$$", "$"))
    return words


def verify_with_systemd(unit: Path) -> None:
    """``systemd-analyze verify`` parses the unit as systemd does (quoting, specifiers, that the
    executable exists). ``scripts/setup.sh`` installs it (Debian's ``systemd`` package)."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: run scripts/setup.sh (apt package 'systemd')", pytrace=False)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and unit.name not in proc.stderr, proc.stderr


def test_install_writes_a_unit_and_uninstall_removes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "my users.yml")
    units = tmp_path / "units"
    assert main(["install", str(config), "--unit-dir", str(units)]) == 0
    unit = units / "fliplet-agent-my-users.service"
    text = unit.read_text()
    assert "Restart=on-failure" in text and "default.target" in text
    out = capsys.readouterr()
    assert "systemctl --user enable --now fliplet-agent-my-users.service" in out.out and "Warning" not in out.err
    verify_with_systemd(unit)
    assert main(["uninstall", str(config), "--unit-dir", str(units)]) == 0
    assert not unit.exists()
    assert main(["uninstall", str(config), "--unit-dir", str(units)]) == 1


def test_exec_start_is_this_installation_and_every_path_survives_quoting(tmp_path: Path) -> None:
    """A folder with a space, a quote, ``$``, ``%`` and a backslash: the unit's command line, read
    back as systemd reads it, is this interpreter + the config path, and that command works."""
    folder = tmp_path / 'odd dir "q" $HOME %h back\\slash'
    config = write_config(folder / "my users.yml")
    units = tmp_path / "units"
    assert main(["install", str(config), "--unit-dir", str(units)]) == 0
    unit = units / "fliplet-agent-my-users.service"
    text = unit.read_text()
    argv = systemd_argv(setting(text, "ExecStart"))
    assert argv == [sys.executable, "-P", "-m", "fliplet_workers.cli", "start", str(config.resolve())]
    assert setting(text, "WorkingDirectory").replace("%%", "%") == str(folder.resolve())
    assert setting(text, "EnvironmentFile").replace("%%", "%") == "-" + str(folder.resolve() / "my users.env")
    # the same command, with `validate` for `start`, runs this installation on the odd path
    proc = subprocess.run([*argv[:4], "validate", argv[5]], capture_output=True, text=True, timeout=60,
                          cwd=folder)
    assert proc.returncode == 0 and "OK (1 operation(s))" in proc.stdout, proc.stderr
    verify_with_systemd(unit)


def test_a_fliplet_workers_folder_beside_the_config_cannot_shadow_the_package(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yml")
    (tmp_path / "fliplet_workers").mkdir()
    (tmp_path / "fliplet_workers" / "__init__.py").write_text("raise SystemExit('shadowed')\n")
    argv = systemd_argv(setting(service.render(config, False), "ExecStart"))
    proc = subprocess.run([*argv[:4], "validate", argv[5]], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "shadowed" not in proc.stderr, proc.stderr


def test_print_shows_the_unit_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "users.yml")
    units = tmp_path / "units"
    assert main(["install", str(config), "--print", "--unit-dir", str(units), "--system"]) == 0
    out = capsys.readouterr().out
    assert out == service.render(config, True) and not units.exists()
    assert out.startswith("# Installed by `fliplet-agent install`") and "WantedBy=multi-user.target" in out
    assert "Installed" not in out.replace("# Installed", "")


def test_a_config_without_frequency_gets_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "once.yml", extra="")
    assert main(["install", str(config), "--unit-dir", str(tmp_path / "u")]) == 0
    err = capsys.readouterr().err
    assert f"Warning: {config}: no operation has a 'frequency': the service would run the config once and stop" in err
    assert (tmp_path / "u" / "fliplet-agent-once.service").exists()  # a warning, not a refusal
    assert main(["install", str(config), "--print"]) == 0
    assert "no operation has a 'frequency'" in capsys.readouterr().err


def test_install_refuses_an_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.yml"
    config.write_text("auth_token: eu--x\nmode: sideways\n")
    assert main(["install", str(config), "--unit-dir", str(tmp_path / "u")]) == 2
    assert not (tmp_path / "u").exists()


def test_a_path_with_a_line_break_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "two\nlines" / "c.yml")
    assert main(["install", str(config), "--unit-dir", str(tmp_path / "u")]) == 2
    assert "line break" in capsys.readouterr().err and not (tmp_path / "u").exists()


def test_quote_arg() -> None:
    assert service.quote_arg('a "b" \\c $D %e') == '"a \\"b\\" \\\\c $$D %%e"'
