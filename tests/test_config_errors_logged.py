"""Config errors are logged like every other failure: on the terminal AND in the log file
(``FLIPLET_AGENT_LOG``), with the original's wording ("Auth token is required") and the file/line.
Real ``fliplet-agent`` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _agent(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    log = tmp_path / "agent.log"
    env = {**os.environ, "FLIPLET_AGENT_LOG": str(log)}
    proc = subprocess.run([sys.executable, "-m", "fliplet_workers.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr, log.read_text() if log.exists() else ""


GOOD = "datasource_id: 1\ndatabase_driver: sqlite\ndatabase_name: src.db\nquery: SELECT 1\n"


def test_missing_token_reads_as_the_log_table_in_terminal_and_file(tmp_path: Path) -> None:
    config = tmp_path / "no token.yml"
    config.write_text(GOOD)
    code, terminal, logfile = _agent(tmp_path, "start", str(config))
    assert code == 2
    for text in (terminal, logfile):
        assert "CRITICAL [no token] There was an error running your config file." in text
        assert "no token.yml: Auth token is required (option 'auth_token')" in text


def test_empty_token_and_line_number(tmp_path: Path) -> None:
    config = tmp_path / "empty.yml"
    config.write_text(GOOD + 'auth_token: ""\n')
    code, terminal, logfile = _agent(tmp_path, "start", str(config))
    assert code == 2
    for text in (terminal, logfile):
        assert "empty.yml:5: Auth token is required (option 'auth_token' is empty)" in text


def test_every_problem_is_logged_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "typos.yml"
    config.write_text("auth_token: eu--secret-token-value-1\n" + GOOD + "batch_size: lots\nmode: replce\n")
    code, terminal, logfile = _agent(tmp_path, "start", str(config), "--test")
    assert code == 2
    for text in (terminal, logfile):
        assert "typos.yml:6: option 'batch_size'" in text and "typos.yml:7: option 'mode'" in text
        assert "2 problem(s) found" in text
        assert "eu--secret-token-value-1" not in text


def test_yaml_syntax_error_is_logged(tmp_path: Path) -> None:
    config = tmp_path / "broken.yml"
    config.write_text("auth_token: x\nquery: [unclosed\nmode: update\n")
    code, terminal, logfile = _agent(tmp_path, "start", str(config))
    assert code == 2
    for text in (terminal, logfile):
        assert "CRITICAL [broken]" in text and "broken.yml:3: YAML syntax error" in text


def test_code_config_missing_token(tmp_path: Path) -> None:
    config = tmp_path / "code.py"
    config.write_text("config = {'isDryRun': True}\n\ndef setup(agent):\n    agent.pull({'targetDataSourceId': 1,"
                      " 'action': lambda entries, db: None})\n")
    code, terminal, logfile = _agent(tmp_path, "start", str(config))
    assert code == 2
    for text in (terminal, logfile):
        assert "code.py:1: Auth token is required (option 'authToken')" in text


def test_install_of_a_bad_config_is_logged_too(tmp_path: Path) -> None:
    config = tmp_path / "bad.yml"
    config.write_text(GOOD)
    code, terminal, logfile = _agent(tmp_path, "install", str(config), "--unit-dir", str(tmp_path / "units"))
    assert code == 2 and not (tmp_path / "units").exists()
    for text in (terminal, logfile):
        assert "bad.yml: Auth token is required" in text


def test_validate_prints_to_the_terminal_only(tmp_path: Path) -> None:
    config = tmp_path / "bad.yml"
    config.write_text(GOOD)
    code, terminal, logfile = _agent(tmp_path, "validate", str(config))
    assert code == 2 and "bad.yml: Auth token is required" in terminal and logfile == ""
