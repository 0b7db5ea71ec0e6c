"""Loading and validating YAML and Python code configs."""

from __future__ import annotations

import shutil
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

import fliplet_workers.config
from fliplet_workers import redaction
from fliplet_workers.config import Config, Database, Encryption, FileColumn
from fliplet_workers.config.code_config import FunctionSource, PullAction, QuerySource, SyncCallback
from fliplet_workers.config.loader import load_config
from fliplet_workers.errors import ConfigError, SourceError
from fliplet_workers.redaction import Secret

EXAMPLES = Path(__file__).resolve().parent.parent / "configs" / "examples"

BASE = """\
auth_token: eu--abcdef123456
datasource_id: 42
database_driver: postgres
database_host: db.example.org
query: SELECT id FROM users
"""


def write(tmp_path: Path, text: str, name: str = "users.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == str(path)
    assert info.value.exit_code == 2
    return info.value.problems


def only_problem(path: Path) -> str:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


# --------------------------------------------------------------------------------------------------
# YAML: options


def test_original_sample_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLIPLET_TOKEN", raising=False)
    config = load_config(EXAMPLES / "users.yml")
    assert config.name == "users"
    assert config.path == str(EXAMPLES / "users.yml")
    assert config.auth_token == "eu--123456789"
    assert isinstance(config.auth_token, Secret)
    assert config.sync_on_init is False
    assert config.log_verbosity == "debug"
    assert config.database == Database(
        driver="mssql",
        host="localhost",
        port=5432,
        name="eu",
        username="sampleuser",
        password=Secret("123456"),
    )
    (op,) = config.operations
    assert op.type == "push"
    assert op.datasource_id == 123
    assert op.description == "Push my users to Fliplet every 15 minutes"
    assert op.frequency == "*/15 * * * *"
    assert op.query == "SELECT id, email as 'Email', fullName as 'Full Name', updatedAt FROM users;"
    assert (op.primary_column, op.case_insensitive_primary_column, op.timestamp_column) == (
        "id",
        True,
        "updatedAt",
    )
    assert (op.mode, op.batch_size, op.concurrency, op.merge) == ("update", 1000, 1, True)
    assert (op.delete_column, op.run_hooks, op.files, op.encrypt) == (None, (), (), None)


def test_every_yaml_option_reaches_its_field(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = write(
        tmp_path,
        r"""
        auth_token: us--token-0001
        api_url: http://localhost:8123/
        ca_bundle: certs/ca.pem
        retries: 0
        retry_delay: 2.5
        timeout: 15
        sync_on_init: true
        log_verbosity: info
        datasource_id: 77
        database_driver: mssql
        database_host: sql.corp
        database_port: 1433
        database_name: crm
        database_username: agent
        database_password: s3cret-pw
        database_domain: CORP
        database_instance: SQLEXPRESS
        database_encrypt: false
        database_native_odbc: true
        description: "  Contacts to Fliplet  "
        frequency: 0 8 * * MON-FRI
        query: SELECT * FROM contacts
        primary_column: ContactId
        case_insensitive_primary_column: yes
        timestamp_column: ModifiedAt
        delete_column: DeletedAt
        mode: replace
        batch_size: 250
        concurrency: 4
        run_hooks: [insert, update]
        merge: true
        files:
          - column: photo
            type: remote
            headers:
              Authorization: Bearer hdr-token-1
              X-Count: 12
          - column: cv
            type: local
            directory: C:\share\cvs
          - column: badge
            type: sharepoint
            fileType: inherit
            username: spuser
            password: sp-pass-77
        encrypt:
          fields: [Email, Phone]
          key: enc-key-0042
        """,
    )
    config = load_config(path)
    assert config.name == "users"
    assert (config.auth_token, config.api_url, config.ca_bundle) == (
        "us--token-0001",
        "http://localhost:8123/",
        str(tmp_path / "certs" / "ca.pem"),
    )
    assert (config.retries, config.retry_delay, config.timeout) == (0, 2.5, 15.0)
    assert (config.sync_on_init, config.log_verbosity, config.is_dry_run) == (True, "info", False)
    assert config.database == Database(
        driver="mssql",
        host="sql.corp",
        port=1433,
        name="crm",
        username="agent",
        password=Secret("s3cret-pw"),
        domain="CORP",
        instance="SQLEXPRESS",
        encrypt=False,
        native_odbc=True,
    )
    (op,) = config.operations
    assert (op.type, op.datasource_id, op.description) == ("push", 77, "Contacts to Fliplet")
    assert (op.frequency, op.query) == ("0 8 * * MON-FRI", "SELECT * FROM contacts")
    assert (op.primary_column, op.case_insensitive_primary_column) == ("ContactId", True)
    assert (op.timestamp_column, op.delete_column) == ("ModifiedAt", "DeletedAt")
    assert (op.mode, op.batch_size, op.concurrency) == ("replace", 250, 4)
    assert (op.run_hooks, op.merge) == (("insert", "update"), True)
    assert op.files == (
        FileColumn(
            column="photo",
            type="remote",
            headers={"Authorization": Secret("Bearer hdr-token-1"), "X-Count": Secret("12")},
        ),
        FileColumn(column="cv", type="local", directory=r"C:\share\cvs"),
        FileColumn(
            column="badge",
            type="sharepoint",
            username="spuser",
            password=Secret("sp-pass-77"),
            file_type="inherit",
        ),
    )
    assert op.encrypt == Encryption(fields=("Email", "Phone"), key=Secret("enc-key-0042"))
    for secret in (
        config.auth_token,
        config.database.password if config.database else None,
        op.files[0].headers["Authorization"],
        op.files[2].password,
        op.encrypt.key,
    ):
        assert isinstance(secret, Secret)
        assert redaction.redact(f"value={secret.reveal()}") == "value=***"


def test_defaults_of_a_minimal_push(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert (config.sync_on_init, config.log_verbosity, config.retries, config.timeout) == (
        False,
        "debug",
        5,
        60.0,
    )
    assert (config.api_url, config.ca_bundle) == (None, None)
    (op,) = config.operations
    assert (op.mode, op.batch_size, op.concurrency, op.merge, op.frequency) == (
        "update",
        1000,
        1,
        False,
        None,
    )
    assert (op.primary_column, op.timestamp_column, op.encrypt, op.label) == (
        None,
        None,
        None,
        "push to data source 42",
    )


def test_pull_yaml_takes_where_and_attributes_and_needs_no_database(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        auth_token: eu--abcdef123456
        type: pull
        datasource_id: 9
        where:
          syncedAt: ''
          Age: {$gt: 30}
        attributes: [Email, Full Name]
        join: {Orders: {dataSourceId: 5}}
        distinct: true
        """,
    )
    config = load_config(path)
    assert config.database is None
    (op,) = config.operations
    assert (op.type, op.datasource_id) == ("pull", 9)
    assert op.where == {"syncedAt": "", "Age": {"$gt": 30}}
    assert op.attributes == ("Email", "Full Name")
    assert op.join == {"Orders": {"dataSourceId": 5}}
    assert op.distinct is True


@pytest.mark.parametrize(
    ("written", "driver"),
    [
        ("mysql", "mysql"),
        ("mariadb", "mysql"),
        ("MariaDB", "mysql"),
        ("postgresql", "postgres"),
        ("mssql", "mssql"),
    ],
)
def test_driver_names_and_aliases(tmp_path: Path, written: str, driver: str) -> None:
    config = load_config(write(tmp_path, BASE.replace("postgres", written)))
    assert config.database is not None
    assert config.database.driver == driver


def test_sqlite_name_is_relative_to_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "cfg"
    folder.mkdir()
    path = write(
        folder,
        """
        auth_token: eu--abcdef123456
        datasource_id: 1
        database_driver: sqlite
        database_name: data/app.db
        query: SELECT 1
        """,
    )
    config = load_config(path)
    assert config.database == Database(driver="sqlite", name=str(folder / "data" / "app.db"))


def test_sqlite_needs_a_database_name(tmp_path: Path) -> None:
    path = write(
        tmp_path, "auth_token: eu--abcdef123456\ndatasource_id: 1\ndatabase_driver: sqlite\nquery: SELECT 1\n"
    )
    assert only_problem(path) == (
        "users.yml:3: option 'database_name' is required for sqlite: the path of the database file"
    )


def test_database_url_is_a_secret_and_names_the_driver(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        auth_token: eu--abcdef123456
        datasource_id: 1
        database_url: postgresql+psycopg2://bob:url-pass-31@db:5432/app
        query: SELECT 1
        """,
    )
    config = load_config(path)
    assert config.database is not None
    assert config.database.driver == "postgres"
    assert isinstance(config.database.url, Secret)
    assert config.database.url.reveal() == "postgresql+psycopg2://bob:url-pass-31@db:5432/app"
    assert "url-pass-31" not in repr(config)
    assert redaction.redact("url-pass-31") == "***"


def test_sqlite_url_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "auth_token: eu--abcdef123456\ndatasource_id: 1\ndatabase_url: sqlite:///app.db\nquery: x\n"
    )
    config = load_config(path)
    assert config.database is not None and config.database.url is not None
    assert (config.database.driver, config.database.url.reveal()) == (
        "sqlite",
        f"sqlite:///{tmp_path / 'app.db'}",
    )


def test_database_url_conflicts(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        auth_token: eu--abcdef123456
        datasource_id: 1
        database_driver: mysql
        database_url: postgresql://bob:url-pass-32@db/app
        database_password: other-pass-32
        query: SELECT 1
        """,
    )
    assert problems_of(path) == [
        "users.yml:3: option 'database_driver' is 'mysql' but 'database_url' is a postgres URL",
        "users.yml:5: option 'database_password' cannot be used together with 'database_url'",
    ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("not a url pw-in-url-33", "is not a valid SQLAlchemy URL"),
        ("oracle://scott:pw-in-url-33@db/orcl", "uses database 'oracle', which is not supported"),
    ],
)
def test_bad_database_url_never_quotes_it(tmp_path: Path, url: str, problem: str) -> None:
    path = write(tmp_path, f"auth_token: eu--abcdef123456\ndatasource_id: 1\ndatabase_url: {url}\nquery: x\n")
    text = only_problem(path)
    assert text.startswith(f"users.yml:3: option 'database_url' {problem}")
    assert "pw-in-url-33" not in text


def test_string_options_keep_what_was_written(tmp_path: Path) -> None:
    # YAML 1.1 would read 0123 as the octal number 83 and "yes" as true
    text = BASE + "database_password: 0123\ndatabase_username: yes\ndescription: 2024\n"
    config = load_config(write(tmp_path, text))
    assert config.database is not None
    assert (config.database.password, config.database.username) == ("0123", "yes")
    assert config.operations[0].description == "2024"


def test_null_and_empty_options_mean_not_set(tmp_path: Path) -> None:
    text = BASE + "run_hooks:\nfiles:\nencrypt:\ntimestamp_column: ''\nfrequency: ''\n"
    (op,) = load_config(write(tmp_path, text)).operations
    assert (op.run_hooks, op.files, op.encrypt, op.timestamp_column, op.frequency) == (
        (),
        (),
        None,
        None,
        None,
    )


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = BASE + textwrap.dedent(
        """\
        files:
          - &photo {column: photo, type: remote, headers: {X-Key: hdr-key-35}}
          - <<: *photo
            column: avatar
        """
    )
    (op,) = load_config(write(tmp_path, text)).operations
    assert [(f.column, f.type, dict(f.headers)) for f in op.files] == [
        ("photo", "remote", {"X-Key": "hdr-key-35"}),
        ("avatar", "remote", {"X-Key": "hdr-key-35"}),
    ]


# --------------------------------------------------------------------------------------------------
# YAML: environment variables


def test_environment_variables_are_substituted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FW_TOKEN", "eu--from-env-36")
    monkeypatch.setenv("FW_BATCH", "50")
    monkeypatch.setenv("FW_MERGE", "true")
    monkeypatch.setenv("FW_EMPTY", "")
    monkeypatch.delenv("FW_UNSET", raising=False)
    path = write(
        tmp_path,
        """
        auth_token: ${FW_TOKEN}
        datasource_id: 42
        database_driver: postgres
        database_host: ${FW_UNSET:-db.internal}
        database_name: ${FW_EMPTY:-fallback}
        query: SELECT '$${FW_TOKEN}' AS literal, '${FW_UNSET:-}' AS blank
        batch_size: ${FW_BATCH}
        merge: ${FW_MERGE}
        description: sync for ${FW_TOKEN}s team
        """,
    )
    config = load_config(path)
    assert config.auth_token == "eu--from-env-36"
    assert isinstance(config.auth_token, Secret)
    assert config.database is not None
    assert (config.database.host, config.database.name) == ("db.internal", "fallback")
    (op,) = config.operations
    assert op.query == "SELECT '${FW_TOKEN}' AS literal, '' AS blank"
    assert (op.batch_size, op.merge) == (50, True)


def test_environment_values_cannot_inject_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FW_DESCRIPTION", "harmless\nmode: replace\nrun_hooks: [insert]")
    (op,) = load_config(write(tmp_path, BASE + "description: ${FW_DESCRIPTION}\n")).operations
    assert op.description == "harmless\nmode: replace\nrun_hooks: [insert]"
    assert (op.mode, op.run_hooks) == ("update", ())


def test_unset_environment_variable_is_a_problem_with_line_and_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FW_MISSING_PW", raising=False)
    monkeypatch.delenv("FW_MISSING_HDR", raising=False)
    text = BASE + "database_password: ${FW_MISSING_PW}\nfiles:\n  - column: a\n    type: remote\n"
    text += "    headers: {Authorization: 'Bearer ${FW_MISSING_HDR}'}\n"
    assert problems_of(write(tmp_path, text)) == [
        "users.yml:6: option 'database_password' uses environment variable 'FW_MISSING_PW', which is not set "
        "(write '${FW_MISSING_PW:-default}' to give a default)",
        "users.yml:10: option 'files[1].headers.Authorization' uses environment variable 'FW_MISSING_HDR', "
        "which is not set (write '${FW_MISSING_HDR:-default}' to give a default)",
    ]


def test_unset_required_variable_is_reported_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FW_NO_TOKEN", raising=False)
    problem = only_problem(write(tmp_path, BASE.replace("eu--abcdef123456", "${FW_NO_TOKEN}")))
    assert problem.startswith("users.yml:1: option 'auth_token' uses environment variable 'FW_NO_TOKEN'")


# --------------------------------------------------------------------------------------------------
# YAML: problems


def test_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "auth_token: eu--abc\ndatasource_id: 1\n  query: [SELECT\n")
    assert (
        only_problem(path)
        == "users.yml:3: YAML syntax error at column 8: mapping values are not allowed here"
    )


def test_syntax_error_never_quotes_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'auth_token: eu--abc\ndatabase_password: "pw-syntax-37\n')
    problem = only_problem(path)
    assert problem.startswith("users.yml:")
    assert "YAML syntax error" in problem and "pw-syntax-37" not in problem


def test_typo_gets_a_suggestion(tmp_path: Path) -> None:
    text = BASE + "primary_colum: id\ndatabse_port: 5432\nsomething_else: 1\n"
    assert problems_of(write(tmp_path, text)) == [
        "users.yml:6: option 'primary_colum' is not known; did you mean 'primary_column'?",
        "users.yml:7: option 'databse_port' is not known; did you mean 'database_port'?",
        "users.yml:8: option 'something_else' is not known",
    ]


def test_wrong_types(tmp_path: Path) -> None:
    text = BASE + "batch_size: abc\nconcurrency: 1.5\nmerge: maybe\nrun_hooks: insert\nfiles: {column: a}\n"
    text += "timeout: 0\nretries: -1\ndatabase_port: 70000\n"
    assert problems_of(write(tmp_path, text)) == [
        "users.yml:6: option 'batch_size' must be a positive whole number, got 'abc'",
        "users.yml:7: option 'concurrency' must be a positive whole number, got 1.5",
        "users.yml:8: option 'merge' must be true or false, got 'maybe'",
        "users.yml:9: option 'run_hooks' must be a list, got 'insert'",
        "users.yml:10: option 'files' must be a list, got a mapping",
        "users.yml:11: option 'timeout' must be a positive number of seconds, got 0",
        "users.yml:12: option 'retries' must be a whole number of at least 0, got -1",
        "users.yml:13: option 'database_port' must be a port number (1-65535), got 70000",
    ]


def test_bad_cron_says_why(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "frequency: '61 * * * *'\n")
    assert only_problem(path) == (
        "users.yml:6: option 'frequency' is not a valid cron expression '61 * * * *': "
        "minute value 61 is out of range 0-59"
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("mode: replce", "option 'mode' must be one of update, replace, got 'replce'"),
        ("log_verbosity: loud", "option 'log_verbosity' must be one of debug, info, critical, got 'loud'"),
        ("type: sync", "option 'type' must be one of push, pull, got 'sync'"),
        ("run_hooks: [insert, delete]", "option 'run_hooks[2]' must be one of insert, update, got 'delete'"),
        ("datasource_id: 0", None),
    ],
)
def test_bad_choices(tmp_path: Path, line: str, problem: str | None) -> None:
    text = BASE.replace("datasource_id: 42\n", "") + line + "\n"
    if problem is None:  # datasource_id replaced by a wrong one
        problem = "option 'datasource_id' must be a positive whole number, got 0"
    else:
        text += "datasource_id: 42\n"
    assert only_problem(write(tmp_path, text)) == f"users.yml:5: {problem}"


def test_missing_required_options(tmp_path: Path) -> None:
    path = write(tmp_path, "description: nothing else\n")
    assert problems_of(path) == [
        "users.yml: Auth token is required (option 'auth_token')",
        "users.yml: option 'datasource_id' is required",
        "users.yml: option 'query' is required",
        "users.yml: a push operation needs a database: set 'database_driver' (and the other database_* options) "
        "or 'database_url'",
    ]


def test_empty_required_value_is_reported_on_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("query: SELECT id FROM users", "query: '  '"))
    assert only_problem(path) == "users.yml:5: option 'query' must not be empty"


def test_database_options_without_a_driver(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("database_driver: postgres\n", ""))
    assert only_problem(path) == (
        "users.yml:3: option 'database_driver' is required to connect to a database (mysql, sqlite, postgres, mssql)"
    )


def test_encrypting_the_primary_key_is_refused(tmp_path: Path) -> None:
    text = BASE + "primary_column: id\nencrypt:\n  fields: [Email, id]\n"
    assert only_problem(write(tmp_path, text)) == (
        "users.yml:8: option 'encrypt.fields' lists the primary column 'id': You cannot encrypt the Primary Key"
    )


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("encrypt:\n  key: enc-key-38\n", "users.yml:6: option 'encrypt.fields' is required"),
        ("encrypt:\n  fields: []\n", "users.yml:7: option 'encrypt.fields' must list at least one entry"),
        (
            "encrypt:\n  fields: [a]\n  key: enc-key-38\n  salt: enc-salt-38\n",
            "users.yml:9: option 'encrypt.salt' cannot be used together with 'encrypt.key': "
            "the salt only protects a key Fliplet manages",
        ),
        (
            "encrypt:\n  fields: [a]\n  kee: enc-key-38\n",
            "users.yml:8: option 'encrypt.kee' is not known; did you mean 'encrypt.key'?",
        ),
        (
            "encrypt: [a, b]\n",
            "users.yml:6: option 'encrypt' must be a mapping of names to values, got a list",
        ),
    ],
)
def test_encrypt_problems(tmp_path: Path, block: str, problem: str) -> None:
    text = only_problem(write(tmp_path, BASE + block))
    assert text == problem
    assert "enc-key-38" not in text and "enc-salt-38" not in text


def test_file_column_problems(tmp_path: Path) -> None:
    text = BASE + textwrap.dedent(
        """\
        files:
          - column: a
            type: remot
          - column: b
            type: sharepoint
          - column: c
            type: remote
            directory: /srv/files
          - type: local
            colum: d
          - just a string
        """
    )
    assert problems_of(write(tmp_path, text)) == [
        "users.yml:8: option 'files[1].type' must be one of remote, local, sharepoint, got 'remot'",
        "users.yml:9: option 'files[2].username' is required for sharepoint files",
        "users.yml:9: option 'files[2].password' is required for sharepoint files",
        "users.yml:13: option 'files[3].directory' does not apply to remote files",
        "users.yml:14: option 'files[4].column' is required",
        "users.yml:15: option 'files[4].colum' is not known; did you mean 'files[4].column'?",
        "users.yml:16: option 'files[5]' must be a mapping with 'column' and 'type', got 'just a string'",
    ]


def test_options_for_the_other_kind_of_operation(tmp_path: Path) -> None:
    pull = write(
        tmp_path,
        "auth_token: eu--abcdef123456\ndatasource_id: 4\ntype: pull\nprimary_column: id\nmode: replace\n",
    )
    assert problems_of(pull) == [
        "users.yml:4: option 'primary_column' only applies to push operations",
        "users.yml:5: option 'mode' only applies to push operations",
    ]
    push = write(tmp_path, BASE + "where: {a: 1}\n", name="push.yml")
    assert only_problem(push) == "push.yml:6: option 'where' only applies to pull operations"


def test_duplicate_option_is_reported_on_its_second_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "mode: replace\nmode: update\n")
    assert only_problem(path) == "users.yml:7: option 'mode' is given twice (first on line 6)"


def test_every_problem_is_reported_at_once_in_line_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FW_NOPE", raising=False)
    path = write(
        tmp_path,
        """
        datasource_id: abc
        database_driver: oracle
        database_password: ${FW_NOPE}
        primary_colum: id
        frequency: '* * *'
        mode: replce
        batch_size: -5
        api_url: ftp://example.org
        ca_bundle: missing.pem
        """,
    )
    problems = problems_of(path)
    assert problems == [
        "users.yml: Auth token is required (option 'auth_token')",
        "users.yml: option 'query' is required",
        "users.yml:1: option 'datasource_id' must be a positive whole number, got 'abc'",
        "users.yml:2: option 'database_driver' must be one of mysql, sqlite, postgres, mssql, got 'oracle'",
        "users.yml:3: option 'database_password' uses environment variable 'FW_NOPE', which is not set "
        "(write '${FW_NOPE:-default}' to give a default)",
        "users.yml:4: option 'primary_colum' is not known; did you mean 'primary_column'?",
        "users.yml:5: option 'frequency' is not a valid cron expression '* * *': "
        "expected 5 fields (minute hour day-of-month month day-of-week), got 3",
        "users.yml:6: option 'mode' must be one of update, replace, got 'replce'",
        "users.yml:7: option 'batch_size' must be a positive whole number, got -5",
        "users.yml:8: option 'api_url' must be an http:// or https:// URL, got 'ftp://example.org'",
        f"users.yml:9: option 'ca_bundle' names a file that does not exist: '{tmp_path / 'missing.pem'}'",
    ]
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message.startswith(f"{path}: 11 problem(s) found:\n  - users.yml: Auth token is required")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "users.yml: the file is empty; expected options such as 'auth_token: ...'"),
        ("# only comments\n", "users.yml: the file is empty; expected options such as 'auth_token: ...'"),
        (
            "- a\n- b\n",
            "users.yml: the file must be a mapping of options such as 'auth_token: ...', got a list",
        ),
        (
            "just text\n",
            "users.yml: the file must be a mapping of options such as 'auth_token: ...', got 'just text'",
        ),
    ],
)
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str, problem: str) -> None:
    assert only_problem(write(tmp_path, text)) == problem


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    assert only_problem(missing) == f"nope.yml: the config file does not exist (looked for {missing})"
    missing_py = tmp_path / "nope.py"
    assert only_problem(missing_py) == f"nope.py: the config file does not exist (looked for {missing_py})"
    assert only_problem(write(tmp_path, "a: 1", name="users.json")) == (
        "users.json: unsupported config file type '.json'; use .yml, .yaml or .py"
    )


def test_yaml_extension_is_accepted_and_names_the_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE, name="Nightly Sync.yaml"))
    assert config.name == "Nightly Sync"


# --------------------------------------------------------------------------------------------------
# Secrets


SECRET_VALUES = ("tok-SECRET-4242", "pw-SECRET-9999", "hdr-SECRET-1234", "sp-SECRET-5678", "key-SECRET-2468")


def secret_yaml(extra: str = "") -> str:
    return (
        textwrap.dedent(
            f"""\
        auth_token: {SECRET_VALUES[0]}
        datasource_id: 42
        database_driver: mysql
        database_password: {SECRET_VALUES[1]}
        query: SELECT 1
        files:
          - column: a
            type: remote
            headers: {{Authorization: {SECRET_VALUES[2]}}}
          - column: b
            type: sharepoint
            username: me
            password: {SECRET_VALUES[3]}
        encrypt:
          fields: [x]
          key: {SECRET_VALUES[4]}
        """
        )
        + extra
    )


def test_secrets_never_appear_in_repr_of_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, secret_yaml()))
    text = repr(config) + str(config)
    for value in SECRET_VALUES:
        assert value not in text
        assert redaction.redact(f"<{value}>") == "<***>"
    assert "Secret('***')" in text


def test_secrets_never_appear_in_problems(tmp_path: Path) -> None:
    # every secret in a wrong place or of a wrong type, plus other problems around them
    text = secret_yaml("mode: nope\n").replace("type: remote", "type: local")
    text = text.replace(f"database_password: {SECRET_VALUES[1]}", f"database_password: [{SECRET_VALUES[1]}]")
    text = text.replace(f"key: {SECRET_VALUES[4]}", f"key: {{k: {SECRET_VALUES[4]}}}")
    text = text.replace(f"auth_token: {SECRET_VALUES[0]}", f"auth_token:\n  - {SECRET_VALUES[0]}")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    rendered = "\n".join([str(info.value), repr(info.value), info.value.log_text(), *info.value.problems])
    for value in SECRET_VALUES:
        assert value not in rendered
    assert "option 'database_password' must be a string" in rendered
    assert "option 'auth_token' must be a string" in rendered
    assert "option 'files[1].headers' does not apply to local files" in rendered
    assert "option 'encrypt.key' must be a string" in rendered


# --------------------------------------------------------------------------------------------------
# Code configs


def test_code_config_example_in_camel_case() -> None:
    config = load_config(EXAMPLES / "code_config.py")
    assert config.name == "code_config"
    assert (config.sync_on_init, config.is_dry_run, config.log_verbosity) == (True, False, "debug")
    assert config.database is not None and config.database.driver == "postgres"
    assert [op.type for op in config.operations] == ["push", "push", "push", "pull"]
    first, second, third, pull = config.operations
    assert (first.datasource_id, first.query, first.primary_column, first.timestamp_column) == (
        123,
        'SELECT id, email, "updatedAt" FROM users ORDER BY id',
        "id",
        "updatedAt",
    )
    assert (first.delete_column, first.case_insensitive_primary_column, first.merge) == (
        "deletedAt",
        True,
        True,
    )
    assert first.files == (FileColumn(column="thumbnail", type="remote"),)
    assert isinstance(first.on_sync, SyncCallback)
    assert isinstance(second.source, QuerySource) and second.query is None
    assert second.frequency == "0 8 * * MON-FRI"
    assert isinstance(third.source, FunctionSource)
    assert (third.mode, third.datasource_id) == ("replace", 125)
    assert pull.where == {"syncedAt": ""} and pull.attributes == ("First name", "Last name")
    assert isinstance(pull.action, PullAction)


CAMEL = """\
import os

config = {
    "authToken": "eu--camel-token",
    "isDryRun": True,
    "syncOnInit": False,
    "logVerbosity": "critical",
    "batchSize": 300,
    "baseURL": "https://sandbox.example.org/",
    "retries": 2,
    "timeout": 5,
    "database": {
        "dialect": "mssql",
        "host": "sql.corp",
        "username": "agent",
        "password": "camel-pw-51",
        "port": 1433,
        "database": "crm",
        "dialectOptions": {"domain": "CORP", "instanceName": "SQLEXPRESS", "encrypt": True},
        "dialectModulePath": "sequelize-odbc-mssql",
    },
}


def setup(agent):
    agent.push({
        "description": "camel push",
        "frequency": "*/5 * * * *",
        "sourceQuery": "SELECT * FROM t",
        "primaryColumnName": "Id",
        "caseInsensitivePrimaryColumn": True,
        "timestampColumnName": "Ts",
        "deleteColumnName": "Gone",
        "targetDataSourceId": 10,
        "mode": "replace",
        "runHooks": ["update"],
        "merge": True,
        "files": [{"column": "pic", "type": "sharepoint", "fileType": "inherit",
                   "username": "u", "password": "camel-sp-52"}],
        "encrypt": {"fields": ["Email"], "salt": "camel-salt-53"},
        "concurrency": 3,
    })
    agent.push({"targetDataSourceId": 11, "sourceQuery": "SELECT 2", "batchSize": 20})
"""


def test_code_config_camel_case_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CAMEL, name="camel.py"))
    assert (config.auth_token, config.is_dry_run, config.sync_on_init, config.log_verbosity) == (
        "eu--camel-token",
        True,
        False,
        "critical",
    )
    assert (config.api_url, config.retries, config.timeout) == ("https://sandbox.example.org/", 2, 5.0)
    assert config.database == Database(
        driver="mssql",
        host="sql.corp",
        port=1433,
        name="crm",
        username="agent",
        password=Secret("camel-pw-51"),
        domain="CORP",
        instance="SQLEXPRESS",
        encrypt=True,
        native_odbc=True,
    )
    first, second = config.operations
    assert (first.description, first.frequency, first.query, first.datasource_id) == (
        "camel push",
        "*/5 * * * *",
        "SELECT * FROM t",
        10,
    )
    assert (first.primary_column, first.case_insensitive_primary_column) == ("Id", True)
    assert (first.timestamp_column, first.delete_column, first.mode) == ("Ts", "Gone", "replace")
    assert (first.run_hooks, first.merge, first.concurrency) == (("update",), True, 3)
    assert first.files == (
        FileColumn(
            column="pic", type="sharepoint", username="u", password=Secret("camel-sp-52"), file_type="inherit"
        ),
    )
    assert first.encrypt == Encryption(fields=("Email",), salt=Secret("camel-salt-53"))
    # the config-level batchSize is every operation's default; an operation may override it
    assert (first.batch_size, second.batch_size) == (300, 20)
    for value in ("eu--camel-token", "camel-pw-51", "camel-sp-52", "camel-salt-53"):
        assert value not in repr(config)


SNAKE = """\
config = dict(
    auth_token="eu--snake-token",
    sync_on_init=False,
    database={"driver": "sqlite", "storage": "local.db"},
)


def rows():
    return [{"id": 1}, {"id": 2}]


def setup(agent, options):
    options.log.debug("setting up")
    agent.push(
        datasource_id=7,
        source_query="SELECT id FROM t",
        primary_column="id",
        timestamp_column="ts",
        run_hooks=["insert"],
        batch_size=10,
    )
    agent.push(datasource_id=8, source=rows, on_sync=lambda: None)
    agent.pull({"datasource_id": 9, "attributes": ["a"], "distinct": True, "action": lambda entries: None})
"""


def test_code_config_snake_case_keys_and_keyword_calls(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SNAKE, name="snake.py"))
    assert (config.auth_token, config.sync_on_init) == ("eu--snake-token", False)
    assert config.database == Database(driver="sqlite", name=str(tmp_path / "local.db"))
    query_op, source_op, pull = config.operations
    assert (query_op.datasource_id, query_op.query, query_op.primary_column) == (7, "SELECT id FROM t", "id")
    assert (query_op.timestamp_column, query_op.run_hooks, query_op.batch_size) == ("ts", ("insert",), 10)
    assert source_op.source is not None
    ctx = types.SimpleNamespace(db=None, http=None)
    assert list(source_op.source(ctx)) == [{"id": 1}, {"id": 2}]
    assert source_op.on_sync is not None and source_op.on_sync({"commits": []}) is None
    assert (pull.datasource_id, pull.attributes, pull.distinct) == (9, ("a",), True)
    assert pull.action is not None and pull.action([{"id": 1}], None) is None


def test_code_config_defaults_sync_on_init_to_true_like_the_original(tmp_path: Path) -> None:
    text = 'config = {"authToken": "eu--x-token"}\ndef setup(agent):\n    agent.pull({"targetDataSourceId": 1})\n'
    config = load_config(write(tmp_path, text, name="pull.py"))
    assert config.sync_on_init is True
    assert config.database is None
    assert config.operations[0].action is None


class FakeDB:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def query(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        self.calls.append((sql, params))
        return [{"id": 1, "sql": sql}]


class FakeResponse:
    status_code = 200

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self.checked = False

    def raise_for_status(self) -> None:
        self.checked = True

    def json(self) -> Any:
        return self.payload


class FakeHttp:
    def __init__(self) -> None:
        self.urls: list[str] = []
        self.last: FakeResponse | None = None

    def get(self, url: str, **kwargs: Any) -> FakeResponse:
        self.urls.append(url)
        self.last = FakeResponse([{"id": "a"}, {"id": "b"}])
        return self.last


SOURCES = """\
import asyncio

config = {"authToken": "eu--src-token", "database": {"dialect": "postgres", "host": "db"}}


def by_query(db):
    return db.query("SELECT id FROM users WHERE active = :a", {"a": True})


async def from_api(http):
    await asyncio.sleep(0)
    return http.get("https://api.example.org/items")


def broken(http):
    return None


def setup(agent):
    agent.push({"targetDataSourceId": 1, "sourceQuery": by_query})
    agent.push({"targetDataSourceId": 2, "source": from_api})
    agent.push({"targetDataSourceId": 3, "source": broken})
    agent.push({"targetDataSourceId": 4, "source": lambda: ({"n": n} for n in range(3))})
"""


def test_source_functions_are_called_with_the_context(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SOURCES, name="sources.py"))
    query_op, api_op, broken_op, generator_op = config.operations
    db, http = FakeDB(), FakeHttp()
    ctx = types.SimpleNamespace(db=db, http=http)

    assert query_op.source is not None
    assert list(query_op.source(ctx)) == [{"id": 1, "sql": "SELECT id FROM users WHERE active = :a"}]
    assert db.calls == [("SELECT id FROM users WHERE active = :a", {"a": True})]

    # an async source returning a requests-like response: its JSON body is used
    assert api_op.source is not None
    assert list(api_op.source(ctx)) == [{"id": "a"}, {"id": "b"}]
    assert http.urls == ["https://api.example.org/items"]
    assert http.last is not None and http.last.checked

    assert broken_op.source is not None
    with pytest.raises(
        SourceError, match=r"source\(http\) must return a list \(or iterable\) of row dicts, got nothing"
    ):
        broken_op.source(ctx)

    assert generator_op.source is not None
    assert list(generator_op.source(ctx)) == [{"n": 0}, {"n": 1}, {"n": 2}]

    with pytest.raises(SourceError, match=r"sourceQuery\(db\) needs a database"):
        query_op.source(types.SimpleNamespace(db=None, http=http))


def test_exception_inside_setup_is_a_config_error(tmp_path: Path) -> None:
    text = """\
    config = {"authToken": "eu--abc-token"}


    def setup(agent):
        agent.push({"targetDataSourceId": 1, "sourceQuery": "SELECT 1"})
        settings = {}
        agent.push({"targetDataSourceId": settings["missing"]})
    """
    assert (
        only_problem(write(tmp_path, text, name="boom.py"))
        == "boom.py:7: setup(agent) failed: KeyError: 'missing'"
    )


def test_exception_while_running_the_file_is_a_config_error(tmp_path: Path) -> None:
    text = 'import os\nconfig = {"authToken": os.environ["FW_SURELY_UNSET_VAR"]}\n'
    problem = only_problem(write(tmp_path, text, name="env.py"))
    assert problem == "env.py:2: running the config file failed: KeyError: 'FW_SURELY_UNSET_VAR'"
    assert only_problem(write(tmp_path, "import not_a_module_fw\n", name="imp.py")) == (
        "imp.py:1: running the config file failed: ModuleNotFoundError: No module named 'not_a_module_fw'"
    )
    assert only_problem(write(tmp_path, "raise SystemExit(3)\n", name="exit.py")) == (
        "exit.py:1: running the config file failed: SystemExit: 3"
    )


def test_python_syntax_error(tmp_path: Path) -> None:
    text = 'config = {"authToken": "x"\n\ndef setup(agent):\n    pass\n'
    assert (
        only_problem(write(tmp_path, text, name="syntax.py"))
        == "syntax.py:1: Python syntax error: '{' was never closed"
    )


def test_missing_config_setup_and_operations(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, "settings = {}\n", name="empty.py")) == [
        "empty.py: the file does not define config = {...} with the agent's settings (such as 'authToken')",
        "empty.py: the file does not define a setup(agent) function that adds operations with "
        "agent.push({...}) or agent.pull({...})",
    ]
    text = 'config = ["eu--x"]\ndef setup(agent):\n    pass\n'
    assert problems_of(write(tmp_path, text, name="noop.py")) == [
        "noop.py: config must be a dict of settings, got a list",
        "noop.py: setup(agent) adds no operation; call agent.push({...}) or agent.pull({...}) in it",
    ]


CODE_PROBLEMS = """\
config = {
    "authToken": "eu--code-token-61",
    "auth_token": "eu--code-token-61",
    "logVerbosity": "loud",
    "database": {
        "dialect": "postgres",
        "hots": "db",
        "password": ["code-pw-62"],
    },
}


def two(a, b):
    return []


def setup(agent):
    agent.push({
        "targetDataSourceId": 12,
        "sourceQuery": "SELECT 1",
        "primaryColumName": "id",
        "mode": "replce",
        "frequency": "0 25 * * *",
    })
    agent.push(
        datasource_id=-3,
        source=two,
        onSync=5,
    )
    agent.pull({"targetDataSourceId": 4, "action": lambda: None, "where": 3, "merge": True})
    agent.push({"targetDataSourceId": 5})
    agent.push({"targetDataSourceId": 6, "sourceQuery": "SELECT 1", "source": lambda: []})
    agent.push("not options")
"""


def test_code_config_problems_name_operation_line_and_option(tmp_path: Path) -> None:
    path = write(tmp_path, CODE_PROBLEMS, name="sync.py")
    problems = problems_of(path)
    assert problems == [
        "sync.py:3: option 'auth_token' is the same option as 'authToken'; give it once",
        "sync.py:4: option 'logVerbosity' must be one of debug, info, critical, got 'loud'",
        "sync.py:7: option 'database.hots' is not known; did you mean 'database.host'?",
        "sync.py:8: option 'database.password' must be a string",
        "sync.py:21: operation 1: option 'primaryColumName' is not known; did you mean 'primaryColumnName'?",
        "sync.py:22: operation 1: option 'mode' must be one of update, replace, got 'replce'",
        "sync.py:23: operation 1: option 'frequency' is not a valid cron expression '0 25 * * *': "
        "hour value 25 is out of range 0-23",
        "sync.py:26: operation 2: option 'datasource_id' must be a positive whole number, got -3",
        "sync.py:27: operation 2: option 'source' must be a function like source(http) or source(): "
        "it cannot be called that way",
        "sync.py:28: operation 2: option 'onSync' must be a function like onSync(result) or (), got 5",
        "sync.py:30: operation 3: option 'merge' only applies to push operations",
        "sync.py:30: operation 3: option 'where' must be a mapping of names to values, got 3",
        "sync.py:30: operation 3: option 'action' must be a function like action(entries, db) or (entries): "
        "it cannot be called that way",
        "sync.py:31: operation 4: option 'sourceQuery' (or 'source') is required for a push operation: "
        "where do rows come from?",
        "sync.py:32: operation 5: option 'source' cannot be used together with 'sourceQuery'; pick one",
        "sync.py:33: operation 6: agent.push() takes a dict of options, got 'not options'",
    ]
    rendered = str(pytest.raises(ConfigError, load_config, path).value)
    assert "eu--code-token-61" not in rendered and "code-pw-62" not in rendered


def test_code_config_query_needs_a_database(tmp_path: Path) -> None:
    text = """\
    config = {"authToken": "eu--x-token"}


    def setup(agent):
        agent.push({"targetDataSourceId": 1, "sourceQuery": "SELECT 1"})
        agent.push({"targetDataSourceId": 2, "sourceQuery": lambda db: db.query("SELECT 2")})
    """
    assert problems_of(write(tmp_path, text, name="nodb.py")) == [
        "nodb.py:5: operation 1: option 'sourceQuery' needs a database: add a 'database' dict to config "
        "(or use 'source')",
        "nodb.py:6: operation 2: option 'sourceQuery' needs a database: add a 'database' dict to config "
        "(or use 'source')",
    ]


def test_code_config_database_url_and_bad_module_path(tmp_path: Path) -> None:
    text = """\
    config = {
        "authToken": "eu--x-token",
        "database": {"url": "mysql+pymysql://u:code-url-pw-63@db/app", "dialectModulePath": "tedious"},
    }


    def setup(agent):
        agent.push({"targetDataSourceId": 1, "sourceQuery": "SELECT 1"})
    """
    assert only_problem(write(tmp_path, text, name="url.py")) == (
        "url.py:3: option 'database.dialectModulePath' only 'sequelize-odbc-mssql' is understood "
        "(it turns on native ODBC)"
    )
    fixed = write(tmp_path, text.replace(', "dialectModulePath": "tedious"', ""), name="url_ok.py")
    config = load_config(fixed)
    assert config.database is not None and config.database.url is not None
    assert (config.database.driver, config.database.url.reveal()) == (
        "mysql",
        "mysql+pymysql://u:code-url-pw-63@db/app",
    )
    assert "code-url-pw-63" not in repr(config)


def test_code_config_can_import_and_be_loaded_twice(tmp_path: Path) -> None:
    path = write(tmp_path, SNAKE, name="twice.py")
    first = load_config(path)
    second = load_config(path)
    assert first.operations[0].query == second.operations[0].query == "SELECT id FROM t"
    copy = tmp_path / "other"
    copy.mkdir()
    shutil.copy(path, copy / "twice.py")
    assert load_config(copy / "twice.py").path == str(copy / "twice.py")


def test_package_entry_point_loads_both_formats(tmp_path: Path) -> None:
    yaml_config = fliplet_workers.config.load_config(str(write(tmp_path, BASE)))
    assert isinstance(yaml_config, Config) and yaml_config.operations[0].query == "SELECT id FROM users"
    config = fliplet_workers.config.load_config(str(write(tmp_path, SNAKE, name="as_string.py")))
    assert isinstance(config, Config)
    assert config.path == str(tmp_path / "as_string.py")
