"""The sandbox's route table: every path, its handler, and the credential it needs.

Why one list: reading it shows the whole surface an attacker on the desktop's browser could reach, and
which token each part needs (see :data:`~fliplet_workers.sandbox.router.AUTH_KINDS`).
"""

from __future__ import annotations

from fliplet_workers.sandbox import console
from fliplet_workers.sandbox import routes_api as api
from fliplet_workers.sandbox import routes_sandbox as admin
from fliplet_workers.sandbox.router import Route, route

_DS = r"v1/data-sources/(?P<ds>\d+)"
_ENTRY = _DS + r"/data/(?P<entry>\d+)"

#: Paths are matched without their leading/trailing slashes and query string.
ROUTES: list[Route] = [
    route("GET", r"v1/user", api.get_user),
    route("GET", r"v1/organizations", api.get_organizations),
    route("GET", r"v1/data-sources", api.list_data_sources),
    route("POST", r"v1/data-sources", api.create_data_source),
    route("GET", _DS + r"/data", api.get_data),
    route("PUT", _DS + r"/data", api.put_data),
    route("POST", _DS + r"/data", api.import_data),
    route("GET", _ENTRY, api.get_entry),
    route("PUT", _ENTRY, api.update_entry),
    route("DELETE", _ENTRY, api.delete_entry),
    route("POST", _DS + r"/commit", api.commit),
    route("POST", _DS + r"/data/query", api.query),
    route("GET", r"v1/media", api.list_media),
    route("POST", r"v1/media/folders", api.create_folder),
    route("POST", r"v1/media/files", api.upload_file),
    route("GET", r"media/files/(?P<id>\d+)/(?P<name>[^/]+)", api.download_file, auth="user"),
    # the console
    route("GET", r"", console.page, auth="user", unauthorized=console.login_form),
    route("POST", r"_sandbox/login", console.login, auth="none"),
    route("POST", r"_sandbox/logout", console.logout, auth="none"),
    route("GET", r"_console/(?P<name>[a-z]+\.(?:js|css))", console.asset, auth="none"),
    route("GET", r"_console/api/index", console.api_index, auth="user"),
    route("GET", r"_console/api/data-sources/(?P<ds>\d+)/entries", console.api_entries, auth="user"),
    route("GET", r"_console/api/commits", console.api_commits, auth="user"),
    route("GET", r"_console/api/commits/(?P<seq>\d+)", console.api_commit, auth="user"),
    # the sandbox's own token only
    route("GET", r"_sandbox/state", admin.sandbox_state, auth="admin"),
    route("GET", r"_sandbox/faults", admin.sandbox_get_faults, auth="admin"),
    route("POST", r"_sandbox/faults", admin.sandbox_set_faults, auth="admin"),
    route("POST", r"_sandbox/reset", admin.sandbox_reset, auth="admin"),
    route("POST", r"_sandbox/data-sources", admin.sandbox_create_data_source, auth="admin"),
    route("POST", r"_sandbox/tokens", admin.sandbox_add_token, auth="admin"),
    route("GET", r"_sandbox/data-sources/(?P<ds>\d+)/commits", admin.sandbox_commits, auth="admin"),
]
