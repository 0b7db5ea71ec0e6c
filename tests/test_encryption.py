"""Field encryption: batches, change detection with encrypted fields, and the keystore flow end to end.

(The CryptoJS format itself has known-answer tests in ``test_crypto.py``.)
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from files_support import FilesWorld, make_files_world

from fliplet_workers.config.model import Config, Database, Encryption, Operation
from fliplet_workers.core import crypto
from fliplet_workers.core.batches import Batch
from fliplet_workers.core.diff import same_data
from fliplet_workers.errors import ConfigError, EncryptionError
from fliplet_workers.fliplet.keystore import WRONG_SALT
from fliplet_workers.pipeline.agent import run_config
from fliplet_workers.pipeline.steps.encryption import (
    PLACEHOLDER,
    Plaintext,
    decoder,
    encrypt_batch,
    placeholder_batch,
)
from fliplet_workers.redaction import Secret
from fliplet_workers.sandbox import DEMO_TOKEN, SandboxServer

KEY = "MySuperSecretEncryptionKey"


def world(sandbox: SandboxServer, tmp_path: Path) -> FilesWorld:
    return make_files_world(sandbox, tmp_path, ("name", "email", "age", "score", "vip", "born", "note"),
                            name="enc")


def keystores(sandbox: SandboxServer) -> list[dict[str, Any]]:
    return sandbox.store.list_data_sources(DEMO_TOKEN, "keystore")


# ---------------------------------------------------------------------------------------------
# Batches and the decoder
# ---------------------------------------------------------------------------------------------


def test_encrypt_batch_encrypts_text_forms_and_leaves_empty_values() -> None:
    row = {"id": 1, "name": "Ann", "age": 42, "score": 1.5, "vip": True, "born": "2024-01-02T00:00:00.000Z",
           "note": "", "email": None, "other": "clear"}
    batch = Batch(number=3, entries=[{"id": 9, "data": row}, {"data": {"id": 2, "other": "x"}}], insert_keys=[2])
    fields = ("name", "age", "score", "vip", "born", "note", "email", "missing")
    out = encrypt_batch(batch, fields, KEY)
    data = out.entries[0]["data"]
    plain = {name: crypto.decrypt(data[name], KEY) for name in ("name", "age", "score", "vip", "born")}
    assert plain == {"name": "Ann", "age": "42", "score": "1.5", "vip": "true", "born": "2024-01-02T00:00:00.000Z"}
    assert data["note"] == "" and data["email"] is None and data["other"] == "clear" and "missing" not in data
    assert out.entries[0]["id"] == 9 and out.entries[1] is batch.entries[1]
    assert (out.number, out.insert_keys) == (3, [2])
    assert row["name"] == "Ann" and row["age"] == 42  # the plan's row is untouched
    again = encrypt_batch(batch, fields, KEY).entries[0]["data"]
    assert again["name"] != data["name"]  # a fresh salt every time


def test_dates_from_the_source_are_encrypted_as_the_iso_text_the_row_carries() -> None:
    batch = Batch(number=1, entries=[{"data": {"born": dt.date(2024, 1, 2)}}])
    born = encrypt_batch(batch, ["born"], KEY).entries[0]["data"]["born"]
    assert crypto.decrypt(born, KEY) == "2024-01-02T00:00:00.000Z"


def test_placeholder_batch_hides_values_for_a_dry_run() -> None:
    batch = Batch(number=1, entries=[{"data": {"name": "Ann", "note": "", "email": None}}])
    data = placeholder_batch(batch, ["name", "note", "email"]).entries[0]["data"]
    assert data == {"name": PLACEHOLDER, "note": "", "email": None}


@pytest.mark.parametrize("value", ["Ann", 42, 1.5, -0.25, True, False, "2024-01-02T00:00:00.000Z", {"a": [1, "b"]}])
def test_decoded_remote_values_compare_equal_to_the_local_ones(value: Any) -> None:
    local = {"id": 1, "field": value}
    remote = {"id": 1, "field": crypto.encrypt_value(value, KEY)}
    decoded = decoder(["field"], KEY)(remote)
    assert same_data(local, decoded, frozenset())
    assert remote["field"] != decoded["field"] or value is None  # the caller's dict is not changed
    assert not same_data({"id": 1, "field": "something else"}, decoded, frozenset())


def test_decoder_leaves_values_it_cannot_decrypt() -> None:
    other = crypto.encrypt("Ann", "another key")
    decoded = decoder(["name", "note"], KEY)({"name": other, "note": "plain"})
    assert decoded == {"name": other, "note": "plain"}
    assert Plaintext("42") == 42 and Plaintext("42") != 43 and Plaintext("x") != None  # noqa: E711


# ---------------------------------------------------------------------------------------------
# End to end with a key from the config
# ---------------------------------------------------------------------------------------------


ROWS = [
    {"id": 1, "name": "Ann", "email": "ann@example.com", "age": 42, "score": 1.5, "vip": 1,
     "born": "2001-02-03", "note": ""},
    {"id": 2, "name": "Bob", "email": None, "age": 0, "score": -2.25, "vip": 0, "born": None, "note": "hi"},
]
FIELDS = ["name", "email", "age", "score", "born", "note"]


def test_config_key_encrypts_fields_and_rerun_sends_nothing(sandbox: SandboxServer, tmp_path: Path) -> None:
    w = world(sandbox, tmp_path)
    w.insert(*ROWS)
    options = {"encrypt": {"fields": FIELDS, "key": KEY}}
    summary = w.run(**options)
    assert summary.ok and summary.inserted == 2
    rows = w.entries()
    for row in ROWS:
        stored = rows[row["id"]]
        assert stored["id"] == row["id"] and stored["vip"] == row["vip"]  # not listed: sent as is
        for name in FIELDS:
            if row[name] is None or row[name] == "":
                assert stored[name] == row[name]
            else:
                assert crypto.looks_encrypted(stored[name])
                assert crypto.decrypt(stored[name], KEY) == crypto.value_text(row[name])
    assert keystores(sandbox) == []  # a configured key never touches the keystore
    assert KEY not in "\n".join(w.handler.messages())

    commits = w.commits()
    summary = w.run(**options)
    assert summary.unchanged == 2 and summary.updated == summary.inserted == 0
    assert w.commits() == commits  # nothing sent although every ciphertext differs

    w.upsert([{**ROWS[0], "age": 43}])
    summary = w.run(**options)
    assert (summary.updated, summary.unchanged) == (1, 1)
    assert crypto.decrypt(w.entries()[1]["age"], KEY) == "43"


def test_primary_key_in_fields_is_refused_before_any_request(sandbox: SandboxServer, tmp_path: Path) -> None:
    w = world(sandbox, tmp_path)
    w.insert(*ROWS)
    with pytest.raises(ConfigError, match="You cannot encrypt the Primary Key"):
        w.run(encrypt={"fields": ["id", "name"]})  # the loader refuses it...
    op = Operation(type="push", datasource_id=w.ds, query="SELECT * FROM items", primary_column="id",
                   encrypt=Encryption(fields=("id", "name")))
    config = Config(name="enc", path=str(tmp_path / "x.py"), auth_token=Secret(DEMO_TOKEN), operations=(op,),
                    database=Database(driver="sqlite", name=str(w.db_path)), api_url=sandbox.url)
    with pytest.raises(EncryptionError, match="You cannot encrypt the Primary Key"):
        run_config(config, log=w.log)  # ...and so does the run, for configs built in code
    assert (w.commits(), keystores(sandbox)) == (0, [])
    assert "Fetching data via Fliplet API" not in "\n".join(w.handler.messages())


# ---------------------------------------------------------------------------------------------
# End to end with the keystore
# ---------------------------------------------------------------------------------------------


def stored_key_content(sandbox: SandboxServer, keystore_id: int) -> list[dict[str, Any]]:
    return [e["data"] for e in sandbox.store.entries(keystore_id)]


def test_keystore_first_run_creates_second_reuses_wrong_salt_fails(sandbox: SandboxServer, tmp_path: Path) -> None:
    w = world(sandbox, tmp_path)
    w.insert(*ROWS)
    options: dict[str, Any] = {"encrypt": {"fields": FIELDS}}

    # First run: a keystore and a key are created; the key is stored encrypted with the default salt.
    assert w.run(**options).inserted == 2
    [ks] = keystores(sandbox)
    assert (ks["name"], ks["organizationId"]) == ("Keystore", 1)
    [stored] = stored_key_content(sandbox, ks["id"])
    assert stored["source"] == "Fliplet Agent" and isinstance(stored["createdAt"], int)
    key = crypto.decrypt(stored["content"], f"1-{ks['id']}")
    assert len(key) == crypto.KEY_LENGTH and key.isalnum()
    assert crypto.decrypt(w.entries()[1]["name"], key) == "Ann"
    log = "\n".join(w.handler.messages())
    assert key not in log and f"1-{ks['id']}" not in log

    # Second run: the same key is found and used; nothing new in the keystore.
    w.upsert([{**ROWS[0], "name": "Anna"}])
    summary = w.run(**options)
    assert (summary.updated, summary.unchanged) == (1, 1)
    assert len(keystores(sandbox)) == 1 and len(stored_key_content(sandbox, ks["id"])) == 1
    assert crypto.decrypt(w.entries()[1]["name"], key) == "Anna"

    # A wrong salt: a clear critical error before anything is sent, with neither salt nor key in it.
    w.upsert([{**ROWS[0], "name": "Anne"}])
    commits = w.commits()
    with pytest.raises(EncryptionError) as caught:
        w.run(encrypt={"fields": FIELDS, "salt": "not-the-salt"})
    assert caught.value.message == WRONG_SALT
    assert "not-the-salt" not in caught.value.log_text() and key not in caught.value.log_text()
    assert w.commits() == commits and crypto.decrypt(w.entries()[1]["name"], key) == "Anna"


def test_keystore_with_a_custom_salt(sandbox: SandboxServer, tmp_path: Path) -> None:
    w = world(sandbox, tmp_path)
    w.insert(ROWS[0])
    salt = "my-own-salt-0123456789"
    assert w.run(encrypt={"fields": ["name"], "salt": salt}).inserted == 1
    [ks] = keystores(sandbox)
    [stored] = stored_key_content(sandbox, ks["id"])
    key = crypto.decrypt(stored["content"], salt)
    assert crypto.decrypt(w.entries()[1]["name"], key) == "Ann"
    with pytest.raises(EncryptionError, match="could not be decrypted with the given salt"):
        w.run(encrypt={"fields": ["name"]})  # the default salt is not the one the key was stored with
    assert salt not in "\n".join(w.handler.messages())


def test_dry_run_creates_no_keystore(sandbox: SandboxServer, tmp_path: Path) -> None:
    w = world(sandbox, tmp_path)
    w.insert(*ROWS)
    summary = w.run(dry_run=True, encrypt={"fields": FIELDS})
    assert summary.dry_run and summary.inserted == 2
    assert (keystores(sandbox), w.commits()) == ([], 0)


def test_dry_run_prepare_encrypts_with_a_known_key_or_shows_a_placeholder(sandbox: SandboxServer,
                                                                          tmp_path: Path) -> None:
    """What the dry-run dump can show: ``run.prepare`` in a dry run uploads nothing and creates nothing."""
    from fliplet_workers.config import load_config
    from fliplet_workers.pipeline.connect import connect_client
    from fliplet_workers.pipeline.spec import Resources, RunSpec
    from fliplet_workers.pipeline.steps.chain import open_steps

    w = world(sandbox, tmp_path)
    batch = Batch(number=1, entries=[{"data": {"id": 1, "name": "Ann", "pic": "/srv/a.png"}}])
    for options, check in (
        ({"encrypt": {"fields": ["name"]}}, lambda v: v == PLACEHOLDER),
        ({"encrypt": {"fields": ["name"], "key": KEY}}, lambda v: crypto.decrypt(v, KEY) == "Ann"),
    ):
        config = load_config(w.write_config(files=[{"column": "pic", "type": "local"}], **options))
        client = connect_client(config)
        steps = open_steps(RunSpec(config=config, index=0, dry_run=True), Resources(api=client, log=w.log))
        assert steps.active
        data = steps.prepare(batch).entries[0]["data"]
        assert check(data["name"]) and data["pic"] == "/srv/a.png"
        steps.close()
        client.close()
    assert (keystores(sandbox), w.media_files()) == ([], 0)


def test_encrypt_only_for_a_fleet_commit_task_reads_the_key_without_creating_it(sandbox: SandboxServer,
                                                                                tmp_path: Path) -> None:
    from fliplet_workers.config import load_config
    from fliplet_workers.pipeline.connect import connect_client
    from fliplet_workers.pipeline.spec import Resources, RunSpec
    from fliplet_workers.pipeline.steps.chain import open_steps
    from fliplet_workers.pipeline.steps.encryption import EncryptStep, KeyCache

    w = world(sandbox, tmp_path)
    config = load_config(w.write_config(encrypt={"fields": ["name"]}))
    batch = Batch(number=1, entries=[{"data": {"id": 1, "name": "Ann"}}])
    spec = RunSpec(config=config, index=0)
    client = connect_client(config)

    with pytest.raises(EncryptionError, match="holds no encryption key yet"):
        KeyCache().key(spec, client)
    assert keystores(sandbox) == [] or stored_key_content(sandbox, keystores(sandbox)[0]["id"]) == []
    open_steps(spec, Resources(api=client, log=w.log)).close()  # the plan step creates keystore and key
    committer = KeyCache()  # a commit task: reads the key (once per process and config)
    name = EncryptStep(("name",), committer.key(spec, client)).apply(batch).entries[0]["data"]["name"]
    assert committer.key(spec, client) is committer.key(spec, client)
    client.close()
    [ks] = keystores(sandbox)
    key = crypto.decrypt(stored_key_content(sandbox, ks["id"])[0]["content"], f"1-{ks['id']}")
    assert crypto.decrypt(name, key) == "Ann"
