"""The Fliplet REST endpoints the agent, a pull action or an app uses, over the sandbox's store.

Why thin: Fliplet's semantics (which token may do what, validation, ``append``/``extend``) live in the
:class:`~fliplet_workers.sandbox.store.Store`, where the in-memory API uses them too; a handler only
reads the request, asks the store, and answers JSON the way Fliplet does.
"""

from __future__ import annotations

import mimetypes
import re
from typing import TYPE_CHECKING
from urllib.parse import quote

from fliplet_workers.sandbox.basics import bad_request
from fliplet_workers.sandbox.wire import Reply, Request, json_reply, parse_multipart

if TYPE_CHECKING:
    from fliplet_workers.sandbox.router import App

def get_user(app: App, req: Request) -> Reply:
    return json_reply({"user": app.store.user_for_token(req.token)})


def get_organizations(app: App, req: Request) -> Reply:
    return json_reply({"organizations": app.store.organizations(req.token)})


def list_data_sources(app: App, req: Request) -> Reply:
    sources = app.store.list_data_sources(req.token, req.query.get("type"), req.query.get("organizationId"))
    return json_reply({"dataSources": sources})


def create_data_source(app: App, req: Request) -> Reply:
    return json_reply({"dataSource": app.store.create_data_source_for(req.token, req.json())})


def get_data(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    app.store.check_source(req.token, ds_id)
    # The snapshot is taken under the store lock; serialising and sending happen without it.
    return app.with_faults("data", lambda: json_reply({"entries": app.store.snapshot(req.token, ds_id)}))


def put_data(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    app.store.check_source(req.token, ds_id)
    return json_reply(app.store.put_entry(req.token, ds_id, req.json()), 201)


def import_data(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    app.store.check_source(req.token, ds_id)
    append = req.query.get("append", "").lower() in ("true", "1")
    return json_reply({"entries": app.store.import_entries(req.token, ds_id, req.json(), append)})


def get_entry(app: App, req: Request) -> Reply:
    return json_reply(app.store.get_entry(req.token, req.int_param("ds"), req.int_param("entry")))


def update_entry(app: App, req: Request) -> Reply:
    ds_id, entry_id = req.int_param("ds"), req.int_param("entry")
    app.store.get_entry(req.token, ds_id, entry_id)  # 401/403/404 before the body is judged
    return json_reply(app.store.update_entry(req.token, ds_id, entry_id, req.json()))


def delete_entry(app: App, req: Request) -> Reply:
    return json_reply(app.store.delete_entry(req.token, req.int_param("ds"), req.int_param("entry")))


def commit(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    app.store.check_source(req.token, ds_id)
    body = req.json()
    seq = app.store.record_commit(ds_id, body)
    return app.with_faults("commit", lambda: json_reply({"entries": app.store.commit(req.token, ds_id, body)}),
                           on_fault=lambda action: app.store.note_commit(seq, f"injected fault: {action}"))


def query(app: App, req: Request) -> Reply:
    ds_id = req.int_param("ds")
    app.store.check_source(req.token, ds_id)
    body = req.json() if req.body.strip() else {}
    return app.with_faults("query", lambda: json_reply({"entries": app.store.query(req.token, ds_id, body)}))


def list_media(app: App, req: Request) -> Reply:
    org = req.query.get("organizationId")
    if not org:
        raise bad_request("organizationId is required")
    return json_reply(app.store.media(req.token, org, req.query.get("folderId"), req.base_url))


def create_folder(app: App, req: Request) -> Reply:
    return json_reply(app.store.create_folder(req.token, req.json()))


def upload_file(app: App, req: Request) -> Reply:
    def apply() -> Reply:
        fields = parse_multipart(req.headers.get("content-type", ""), req.body)
        if "files" not in fields:
            raise bad_request("The multipart body needs a files field")
        filename, content_type, content = fields["files"]
        name = req.query.get("name") or filename or ""
        checksum = fields["checksum"][2].decode("utf-8", "replace") if "checksum" in fields else None
        if not content_type or content_type == "application/octet-stream":
            content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        record = app.store.add_file(req.token, req.query.get("organizationId"), req.query.get("folderId"),
                                    name, content, content_type, checksum, req.base_url)
        return json_reply({"files": [record]})

    return app.with_faults("upload", apply)


def download_file(app: App, req: Request) -> Reply:
    """An uploaded file, always as a download: a user's ``.html`` or ``.svg`` never runs as a page of
    the sandbox's origin (which holds the session cookie)."""
    name = req.params["name"]
    content_type, content = app.store.file_content(req.token, req.int_param("id"), name)
    fallback = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "file"
    return Reply(body=content, content_type=content_type, headers=(
        ("Content-Disposition", f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"),
        ("Content-Security-Policy", "sandbox; default-src 'none'"),
        ("Cache-Control", "private, no-store"),
    ))
