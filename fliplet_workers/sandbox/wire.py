"""Requests and replies as the sandbox's handlers see them, independent of the socket code.

Why: handlers are plain functions from a :class:`Request` to a :class:`Reply`, so they are easy to
read and to test, and every HTML answer gets the same protective headers (:data:`HTML_HEADERS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qs

import orjson

from fliplet_workers.sandbox.basics import bad_request

#: Headers on every HTML answer: no framing (clickjacking), scripts and styles only from the sandbox
#: itself (the console's own files, never inline), no caching, no referrer to other sites. Not
#: ``no-referrer``: under it Chromium sends ``Origin: null`` with the login form's POST, which the
#: Origin check must refuse (a sandboxed frame of any site sends the same).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HTML_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "same-origin"),
)
#: Headers on the console's JSON answers (data: never cached).
PRIVATE_JSON_HEADERS = (("Cache-Control", "no-store"), ("Referrer-Policy", "no-referrer"))

@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes
    base_url: str
    token: str = ""  # the Auth-token header; for cookie routes, the token of the session if none
    params: dict[str, str] = field(default_factory=dict)

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value
        return None

    def form(self) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body (a JSON object is accepted too)."""
        if self.headers.get("content-type", "").lower().startswith("application/json"):
            body = self.json()
            return {str(k): str(v) for k, v in body.items()} if isinstance(body, dict) else {}
        text = self.body.decode("utf-8", "replace")
        return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}

    def json(self) -> Any:
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise bad_request(f"Invalid JSON body: {exc}") from None

    def int_param(self, name: str) -> int:
        return int(self.params[name])


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    drop: bool = False  # close the connection without answering
    headers: tuple[tuple[str, str], ...] = ()


DROP = Reply(drop=True)


def json_reply(value: Any, status: int = 200) -> Reply:
    return Reply(status=status, body=orjson.dumps(value))


def error_reply(status: int, message: str) -> Reply:
    return json_reply({"message": message}, status)


def html_reply(text: str, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status=status, body=text.encode("utf-8"), content_type="text/html; charset=utf-8",
                 headers=HTML_HEADERS + headers)



def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, str | None, bytes]]:
    """multipart/form-data → {field name: (file name, declared content type, bytes)}, via ``email``."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise bad_request("Expected a multipart/form-data body")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise bad_request("Malformed multipart body")
    fields: dict[str, tuple[str | None, str | None, bytes]] = {}
    for part in message.iter_parts():
        disposition = part.get("Content-Disposition")
        name = getattr(disposition, "params", {}).get("name")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        declared = part.get_content_type() if part.get("Content-Type") else None
        fields[name] = (part.get_filename(), declared, payload if isinstance(payload, bytes) else b"")
    return fields
