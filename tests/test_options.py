"""The option table (fliplet_workers/config/options.py): what the loaders, the did-you-mean, secret
registration, the push-only/pull-only checks and the README's option reference derive from it."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fliplet_workers import redaction
from fliplet_workers.config import Config, Database, Encryption, FileColumn, Operation, load_config, reference
from fliplet_workers.config import options as table
from fliplet_workers.config.options import Format, Where
from fliplet_workers.config.section import Names
from fliplet_workers.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def fields(model: type) -> set[str]:
    return {f.name for f in dataclasses.fields(model)}


def names(where: str) -> set[str]:
    return {o.name for o in table.OPTIONS if where in o.where}


# --------------------------------------------------------------------------------------------------
# The table covers the model, and each mapping accepts every spelling once


def test_every_model_field_is_an_option_and_every_option_a_field() -> None:
    assert names("settings") - {"batch_size", "database"} == fields(Config) - {
        "name", "path", "operations", "database",
    }
    assert names("push") | names("pull") == fields(Operation)
    assert names("database") - {"dialect_module_path", "dialect_options"} == fields(Database)
    assert set(table.DATABASE_PARTS) == fields(Database)
    assert names("files") == fields(FileColumn)
    assert names("encrypt") == fields(Encryption)


def rendered(value: bool | int | float | str) -> str:
    """A model default as the reference writes it: ``false``, ``60``, ``update``."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_the_documented_defaults_are_the_models() -> None:
    models = {"settings": Config, "database": Database, "push": Operation, "pull": Operation}
    checked = set()
    for option in table.OPTIONS:
        model = models.get(option.where[0])
        found = {f.name: f for f in dataclasses.fields(model)} if model else {}
        default = found[option.name].default if option.name in found else None
        if isinstance(default, bool | int | float | str) and default != "":
            assert option.default.split(" ")[0] == rendered(default), option.name
            checked.add(option.name)
    assert {"retries", "timeout", "retry_delay", "query_timeout", "batch_size", "mode"} <= checked


@pytest.mark.parametrize(
    "derived, where, fmt",
    [
        (table.YAML_TOP, ("settings", "database", "push", "pull"), "yaml"),
        (table.CODE_SETTINGS, ("settings",), "code"),
        (table.CODE_DATABASE, ("database",), "code"),
        (table.CODE_OPERATION, ("push", "pull"), "code"),
        (table.FILES, ("files",), None),
        (table.ENCRYPT, ("encrypt",), None),
    ],
)
def test_each_mapping_accepts_each_option_once_under_distinct_spellings(
    derived: Names, where: tuple[Where, ...], fmt: Format | None
) -> None:
    options = table.options_in(where, fmt)
    assert len(derived.spellings) == len(options)  # no two options under one canonical name
    spelled = [s for spellings in derived.spellings.values() for s in spellings]
    assert len(spelled) == len(set(spelled)), spelled
    assert derived.secret == {
        (o.yaml_key if derived is table.YAML_TOP else o.name) for o in options if o.secret
    }


def test_code_configs_prefer_the_originals_camel_case_name() -> None:
    assert table.CODE_SETTINGS.spellings["auth_token"] == ("authToken", "auth_token")
    assert table.CODE_OPERATION.spellings["datasource_id"] == ("targetDataSourceId", "datasource_id")
    assert table.CODE_DATABASE.spellings["driver"] == ("dialect", "driver")
    assert table.CODE_DATABASE.spellings["dialect_module_path"] == ("dialectModulePath",)
    assert table.DIALECT_OPTIONS.spellings == {
        "domain": ("domain",), "instance": ("instanceName", "instance"), "encrypt": ("encrypt",),
    }
    assert "is_dry_run" not in table.YAML_TOP.spellings  # code configs only, as in the original
    assert "type" not in table.CODE_OPERATION.spellings  # agent.push / agent.pull say it


# --------------------------------------------------------------------------------------------------
# Behaviour derived from the table


def write(tmp_path: Path, text: str, name: str = "users.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


BASE = """\
auth_token: eu--abcdef123456
datasource_id: 42
database_driver: postgres
database_host: db.example.org
query: SELECT id FROM users
"""
PULL = "auth_token: eu--abcdef123456\ndatasource_id: 42\ntype: pull\n"
#: A value to give each kind of YAML option in the push-only/pull-only check.
SAMPLE = {"files": "[]", "encrypt": "{fields: [a]}", "run_hooks": "[]", "where": "{}", "attributes": "[]",
          "join": "{}", "delete_limit": "5", "mode": "update"}


@pytest.mark.parametrize("name", [n for n in table.PULL_ONLY if n in table.YAML_TOP.spellings])
def test_pull_only_options_are_refused_in_a_push(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, BASE + f"{name}: {SAMPLE.get(name, 'true')}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"users.yml:6: option '{name}' only applies to pull operations"]


@pytest.mark.parametrize("name", [n for n in table.PUSH_ONLY if n in table.YAML_TOP.spellings])
def test_push_only_options_are_refused_in_a_pull(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, PULL + f"{name}: {SAMPLE.get(name, 'x')}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"users.yml:4: option '{name}' only applies to push operations"]


def test_unknown_keys_are_matched_against_the_tables_spellings(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "retry_dela: 2\ndatabase_nativ_odbc: true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        "users.yml:6: option 'retry_dela' is not known; did you mean 'retry_delay'?",
        "users.yml:7: option 'database_nativ_odbc' is not known; did you mean 'database_native_odbc'?",
    ]


#: One value per secret option a YAML config can hold (two files: a URL excludes a password).
SECRET_YAML = [
    (
        """\
        auth_token: eu--token-3f9a1c
        alert_webhook: https://hooks.example.org/alert-77e1
        datasource_id: 42
        database_driver: postgres
        database_username: plain-user-5b2d
        database_password: db-pass-81c4
        query: SELECT id FROM users
        files:
          - {column: a, type: remote, headers: {Authorization: Bearer hdr-9d0e}}
          - {column: b, type: sharepoint, username: sp-user, password: sp-pass-4a7b}
        encrypt: {fields: [c], key: enc-key-62f3}
        """,
        {
            "auth_token": "eu--token-3f9a1c",
            "alert_webhook": "https://hooks.example.org/alert-77e1",
            "database_password": "db-pass-81c4",
            "headers": "Bearer hdr-9d0e",
            "password": "sp-pass-4a7b",
            "key": "enc-key-62f3",
        },
    ),
    (
        """\
        auth_token: eu--token-3f9a1c
        datasource_id: 42
        database_url: postgresql://u:url-pass-13ab@db.example.org/users_db_7c
        query: SELECT id FROM users
        encrypt: {fields: [c], salt: enc-salt-0b5e}
        """,
        {
            "database_url": "postgresql://u:url-pass-13ab@db.example.org/users_db_7c",
            "salt": "enc-salt-0b5e",
        },
    ),
]


def test_every_secret_option_is_registered_for_redaction(tmp_path: Path) -> None:
    tested: set[str] = set()
    for index, (text, values) in enumerate(SECRET_YAML):
        load_config(write(tmp_path, text, name=f"secret{index}.yml"))
        for option, value in values.items():
            assert value not in redaction.redact(f"<{value}>"), option
            tested.add(option)
    assert redaction.redact("x plain-user-5b2d x") == "x plain-user-5b2d x"  # not a secret option
    expected = {o.yaml_key if "database" in o.where else o.name for o in table.OPTIONS if o.secret and o.yaml}
    assert tested == expected  # a new secret option needs a value above


# --------------------------------------------------------------------------------------------------
# The README's option reference


def readme_section() -> str | None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(re.escape(reference.BEGIN) + r"\n(.*?)" + re.escape(reference.END), text, re.S)
    return match.group(1) if match else None


def test_readme_holds_the_generated_option_reference() -> None:
    section = readme_section()
    assert section is not None, (
        "README.md has no option reference between its markers: paste the output of "
        "`python -m fliplet_workers.config.reference` into its Config reference section"
    )
    assert section == reference.markdown(), (
        "README.md's option reference differs from the option table: paste the output of "
        "`python -m fliplet_workers.config.reference` over it"
    )


def test_the_reference_lists_every_option_in_well_formed_tables() -> None:
    text = reference.markdown()
    for block in re.findall(r"(?:^\|.*\|\n)+", text, re.M):
        rows = block.splitlines()
        cells = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
        assert len(cells) == 1, block  # no row has an unescaped | in a cell
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == len(table.OPTIONS) + 5  # one per option, plus the five header rows
    for option in table.OPTIONS:
        shown = option.yaml_key if option.yaml else option.code_names[0]
        assert f"`{shown}`" in text, option.name


def test_the_module_prints_the_reference_between_its_markers() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fliplet_workers.config.reference"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    assert done.stdout == f"{reference.BEGIN}\n{reference.markdown()}{reference.END}\n"
