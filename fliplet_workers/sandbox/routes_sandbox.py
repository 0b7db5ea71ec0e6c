"""The ``/_sandbox/*`` endpoints: inspect and steer the sandbox (the sandbox's own token only).

Why apart from the Fliplet API: these are not Fliplet's; tests, benchmarks and the CLI use them to
reset state, create data sources and tokens, read what was received and inject faults, and only the
sandbox's own token may (see :class:`~fliplet_workers.sandbox.router.App`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fliplet_workers.sandbox.basics import SandboxError, bad_request
from fliplet_workers.sandbox.wire import Reply, Request, json_reply

if TYPE_CHECKING:
    from fliplet_workers.sandbox.router import App

def sandbox_state(app: App, req: Request) -> Reply:
    return json_reply({**app.store.state(), "faults": app.faults.describe()})


def sandbox_get_faults(app: App, req: Request) -> Reply:
    return json_reply(app.faults.describe())


def sandbox_set_faults(app: App, req: Request) -> Reply:
    app.faults.configure(req.json())
    return json_reply(app.faults.describe())


def sandbox_reset(app: App, req: Request) -> Reply:
    app.store.reset()
    app.faults.clear()
    return json_reply({"ok": True})


def sandbox_create_data_source(app: App, req: Request) -> Reply:
    body = req.json()
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise bad_request('Expected {"name": ..., "tokens"?: [...], "type"?: ..., "organizationId"?: N}')
    tokens = body.get("tokens", [app.access.admin_token])
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise bad_request("tokens must be a list of strings")
    org = body.get("organizationId", 1)
    if not isinstance(org, int):
        raise bad_request("organizationId must be an integer")
    try:
        ds_id = app.store.create_data_source(body["name"], org, tokens, body.get("type"))
    except KeyError as exc:
        raise SandboxError(404, str(exc.args[0])) from None
    return json_reply({"id": ds_id})


def sandbox_add_token(app: App, req: Request) -> Reply:
    body = req.json()
    if not isinstance(body, dict) or not isinstance(body.get("token"), str) or not body["token"]:
        raise bad_request('Expected {"token": ..., "email"?: ..., "dataSourceIds"?: [...]}')
    ds_ids = body.get("dataSourceIds", [])
    if not isinstance(ds_ids, list) or not all(isinstance(i, int) for i in ds_ids):
        raise bad_request("dataSourceIds must be a list of integers")
    try:
        app.store.add_token(body["token"], str(body.get("email", "tester@example.com")), ds_ids)
    except KeyError as exc:
        raise SandboxError(404, str(exc.args[0])) from None
    return json_reply({"ok": True})


def sandbox_commits(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    return json_reply({"count": app.store.commit_count(ds_id), "commits": app.store.commits(ds_id)})
