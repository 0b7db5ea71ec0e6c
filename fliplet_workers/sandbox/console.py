"""The console: the page where a user sees what a run did to the sandbox's data sources.

Why served by the sandbox itself, with no build step and no CDN: it must work offline, on the first
try, from ``pip install``; its three files (``console/page.html``, ``console.css``, ``console.js``)
ship in the package. ``GET /`` answers the index of data sources as HTML rendered here (so a client
with an ``Auth-token`` header, or a browser without JavaScript, gets the data), and the script then
navigates (data sources, entries paged and searched, the commit log, one commit's before → after)
through the JSON endpoints under ``/_console/api/``, polling for changes while a run is going.

Who sees what: every page and JSON answer needs a token (the header, or the session cookie the login
form sets); without one, ``GET /`` answers 401 with the login form and no data. A token sees only the
data sources it may read, and their commits. The Content-Security-Policy allows scripts and styles
from the sandbox itself only, never inline, and no framing.
"""

from __future__ import annotations

import dataclasses
import html
from functools import lru_cache
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any

from fliplet_workers.sandbox.basics import SandboxError, bad_request
from fliplet_workers.sandbox.wire import PRIVATE_JSON_HEADERS, Reply, Request, html_reply, json_reply

if TYPE_CHECKING:
    from fliplet_workers.sandbox.router import App

#: The console's own files, served without a token (they hold no data): name → content type.
ASSETS = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
SCRIPT_TAG = '<script src="/_console/console.js" defer></script>'


@lru_cache(maxsize=4)
def _asset(name: str) -> str:
    return resources.files("fliplet_workers.sandbox").joinpath("console", name).read_text("utf-8")


def _page(title: str, body: str, *, nav: str = "", script: bool = False) -> str:
    return Template(_asset("page.html")).substitute(title=html.escape(title), nav=nav, body=body,
                                                     script=SCRIPT_TAG if script else "")


# ------------------------------------------------------------------------------------ HTML


def _nav(email: str, session: bool) -> str:
    logout = ('<form method="post" action="/_sandbox/logout" class="logout"><button type="submit">Log out</button>'
              "</form>") if session else ""
    return (f'<nav><a href="/#/" data-nav="index">Data sources</a> <a href="/#/commits" data-nav="commits">'
            f'Commit log</a></nav><span class="live" id="live"></span>'
            f'<span class="who">{html.escape(email)}</span>{logout}')


def render_index(index: dict[str, Any]) -> str:
    """The index of data sources as HTML (every value escaped); the script re-renders the same."""
    e = html.escape
    sources = index["dataSources"]
    total = sum(s["entries"] for s in sources)
    rows = "\n".join(
        f'<tr><td class="num">{s["id"]}</td><td><a href="/#/ds/{s["id"]}">{e(str(s["name"]))}</a></td>'
        f'<td class="num">{s["entries"]}</td><td><time datetime="{e(s["lastChange"])}">{e(s["lastChange"])}</time></td>'
        f'<td class="num">{s["commits"]}</td><td>{e(str(s["type"] or ""))}</td></tr>'
        for s in sources)
    table = ('<table class="grid"><thead><tr><th class="num">ID</th><th>Data source</th><th class="num">Entries</th>'
             '<th>Last change</th><th class="num">Commits received</th><th>Type</th></tr></thead>'
             f"<tbody>\n{rows}\n</tbody></table>") if sources else '<p class="empty">This token may read no data source.</p>'
    return (f'<h1>Data sources</h1><p class="meta">{len(sources)} data source(s) this token may read, '
            f'{total} entries in total, {index["loggedCommits"]} commit(s) in the log.</p>\n{table}')


def render_login(error: str = "") -> str:
    """The login form shown instead of any data when there is no valid token or session."""
    problem = f'<p class="error">{html.escape(error)}</p>' if error else ""
    body = f"""<h1>Log in</h1>{problem}<p class="meta">Enter a token of this sandbox (the one printed when it
started) to see the data sources it may read and the commits they received. Your browser keeps a session
cookie for this sandbox until you log out or it stops.</p>
<form method="post" action="/_sandbox/login">
<label>Token <input type="password" name="token" autocomplete="off" required autofocus></label>
<button type="submit">Log in</button>
</form>"""
    return _page("Fliplet sandbox: log in", body)


def render_page(app: App, token: str, *, session: bool = False) -> str:
    """The console with its index of the data sources ``token`` may read. ``session``: reached with the
    login cookie, so it offers a logout."""
    user = app.store.user_for_token(token) or {}
    body = render_index(app.store.console_index(token))
    return _page("Fliplet sandbox", body, nav=_nav(str(user.get("email", "")), session), script=True)


# -------------------------------------------------------------------------------- handlers


def page(app: App, req: Request) -> Reply:
    return html_reply(render_page(app, req.token, session=not req.headers.get("auth-token")))


def login_form(app: App, req: Request) -> Reply:
    """What ``GET /`` answers without a valid token or session: 401 and the form, no data."""
    return html_reply(render_login(), 401)


def login(app: App, req: Request) -> Reply:
    """The login form's POST: a valid token opens a session (HttpOnly, SameSite=Strict cookie)."""
    try:
        token = req.form().get("token", "").strip()
    except SandboxError:
        token = ""
    if not token or app.store.user_for_token(token) is None:
        return html_reply(render_login("That token is not valid for this sandbox."), 401)
    session = app.access.open_session(token)
    return Reply(status=303, headers=(("Location", "/"), app.access.set_cookie(session), ("Cache-Control", "no-store")))


def logout(app: App, req: Request) -> Reply:
    app.access.close_session(req)
    return Reply(status=303, headers=(("Location", "/"), app.access.clear_cookie(), ("Cache-Control", "no-store")))


def asset(app: App, req: Request) -> Reply:
    name = req.params["name"]
    if name not in ASSETS:
        raise SandboxError(404, f"No such file: /_console/{name}")
    return Reply(body=_asset(name).encode("utf-8"), content_type=ASSETS[name],
                 headers=(("Cache-Control", "no-cache"),))


def _private(value: Any) -> Reply:
    return dataclasses.replace(json_reply(value), headers=PRIVATE_JSON_HEADERS)


def _number(req: Request, name: str, default: int) -> int:
    raw = req.query.get(name, "")
    if raw == "":
        return default
    if not raw.isdigit():
        raise bad_request(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def api_index(app: App, req: Request) -> Reply:
    user = app.store.user_for_token(req.token) or {}
    return _private({"user": {"email": user.get("email", "")}, **app.store.console_index(req.token)})


def api_entries(app: App, req: Request) -> Reply:
    return _private(app.store.entries_page(req.token, req.int_param("ds"), req.query.get("search", ""),
                                           _number(req, "offset", 0), _number(req, "limit", 50)))


def api_commits(app: App, req: Request) -> Reply:
    raw = req.query.get("dataSourceId", "")
    ds_id = _number(req, "dataSourceId", 0) if raw else None
    return _private(app.store.commit_page(req.token, ds_id, _number(req, "offset", 0), _number(req, "limit", 50)))


def api_commit(app: App, req: Request) -> Reply:
    return _private(app.store.commit_detail(req.token, req.int_param("seq"), _number(req, "offset", 0),
                                            _number(req, "limit", 200)))
