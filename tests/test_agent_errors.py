"""Bad configs and failing dependencies: each ends with one clear message and a non-zero exit,
and no secret appears in the output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fliplet_workers.cli import main
from fliplet_workers.sandbox import DEMO_TOKEN, NO_ACCESS_TOKEN, SandboxServer


def good_options(sandbox: SandboxServer, tmp_path: Path) -> dict[str, Any]:
    import sqlite3

    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER, v TEXT)")
        conn.execute("INSERT INTO t VALUES (1, 'a')")
    return {"auth_token": DEMO_TOKEN, "api_url": sandbox.url, "datasource_id": 1,
            "database_driver": "sqlite", "database_name": str(db), "query": "SELECT id, v FROM t",
            "primary_column": "id"}


def run(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    code = main(["start", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def dump(options: dict[str, Any]) -> str:
    return yaml.safe_dump(options, sort_keys=False)


def test_yaml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(tmp_path, "auth_token: x\nquery: [unclosed\nmode: update\n", capsys)
    assert code == 2 and "bad.yml:3: YAML syntax error at column 5" in out and "1 problem(s)" in out


def test_typo_suggests_the_option(sandbox: SandboxServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = good_options(sandbox, tmp_path)
    options["primary_colum"] = options.pop("primary_column")
    code, out = run(tmp_path, dump(options), capsys)
    assert code == 2 and "primary_colum" in out and "did you mean 'primary_column'" in out


def test_wrong_type_and_bad_cron_reported_together(sandbox: SandboxServer, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    options = good_options(sandbox, tmp_path) | {"batch_size": "lots", "frequency": "61 * * * *"}
    code, out = run(tmp_path, dump(options), capsys)
    assert code == 2 and "batch_size" in out and "frequency" in out and "2 problem" in out


def test_unreachable_database(sandbox: SandboxServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = good_options(sandbox, tmp_path) | {
        "database_driver": "postgres", "database_host": "127.0.0.1", "database_port": 1,
        "database_name": "x", "database_username": "u", "database_password": "hunter2-secret"}
    code, out = run(tmp_path, dump(options), capsys)
    assert code == 1 and "Unable to connect to the database" in out
    assert "hunter2-secret" not in out


def test_wrong_password(mariadb_params: Any, sandbox: SandboxServer, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    options = good_options(sandbox, tmp_path) | mariadb_params.options() | {"database_password": "wrong-pass-xyz"}
    code, out = run(tmp_path, dump(options), capsys)
    assert code == 1 and "Unable to connect to the database" in out and "denied" in out.lower()
    assert "wrong-pass-xyz" not in out


def test_bad_token_is_401(sandbox: SandboxServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = good_options(sandbox, tmp_path) | {"auth_token": "eu--not-a-real-token"}
    code, out = run(tmp_path, dump(options), capsys)
    assert code == 1 and "Unable to authenticate with Fliplet API: Invalid or expired token" in out
    assert "eu--not-a-real-token" not in out


def test_no_access_is_403(sandbox: SandboxServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = good_options(sandbox, tmp_path) | {"auth_token": NO_ACCESS_TOKEN}
    code, out = run(tmp_path, dump(options), capsys)
    assert code == 1 and "You don't have access to the dataSource (1). Please check the permissions" in out
    assert "The server said:" in out


def test_query_error(sandbox: SandboxServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = good_options(sandbox, tmp_path) | {"query": "SELECT nope FROM missing_table"}
    code, out = run(tmp_path, dump(options), capsys)
    assert code == 1 and "Cannot execute database query" in out and "missing_table" in out


def test_validate_command(sandbox: SandboxServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.yml"
    path.write_text(dump(good_options(sandbox, tmp_path)))
    assert main(["validate", str(path)]) == 0
    path.write_text(dump(good_options(sandbox, tmp_path) | {"mode": "replce"}))
    assert main(["validate", str(path)]) == 2
    assert "mode" in capsys.readouterr().err
