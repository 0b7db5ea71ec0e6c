"""``fliplet-agent install`` / ``uninstall``: a systemd unit per config."""

from __future__ import annotations

from pathlib import Path

import pytest

from fliplet_workers.cli import main


def test_install_writes_a_unit_and_uninstall_removes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "my users.yml"
    db = tmp_path / "x.db"
    db.write_bytes(b"")
    config.write_text(f"auth_token: eu--x\ndatasource_id: 1\ndatabase_driver: sqlite\ndatabase_name: {db}\n"
                      "query: SELECT 1\nfrequency: '*/5 * * * *'\n")
    units = tmp_path / "units"
    assert main(["install", str(config), "--unit-dir", str(units)]) == 0
    unit = units / "fliplet-agent-my-users.service"
    text = unit.read_text()
    assert f"start {config.resolve()}" in text and "Restart=on-failure" in text and "default.target" in text
    assert "systemctl --user enable --now fliplet-agent-my-users.service" in capsys.readouterr().out
    assert main(["uninstall", str(config), "--unit-dir", str(units)]) == 0
    assert not unit.exists()
    assert main(["uninstall", str(config), "--unit-dir", str(units)]) == 1


def test_install_refuses_an_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.yml"
    config.write_text("auth_token: eu--x\nmode: sideways\n")
    assert main(["install", str(config), "--unit-dir", str(tmp_path / "u")]) == 2
    assert not (tmp_path / "u").exists()
