"""Reading the settings and the operations of a config, for both formats, from the option table.

Plain options are read by walking :data:`~.options.OPTIONS` in order with each option's parser;
the options with structure (``files``, ``encrypt``) have their readers here, and where a push's rows
come from (``query``, or the code format's functions) is read by the format itself: a YAML config
through ``query``, a code config through the ``hook`` it passes to :func:`read_operation`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fliplet_workers import redaction
from fliplet_workers.config.model import DEFAULT_BATCH_SIZE, Encryption, FileColumn, Operation
from fliplet_workers.config.options import (
    ENCRYPT,
    FILE_TYPES,
    FILES,
    PULL_ONLY,
    PUSH_ONLY,
    Format,
    Option,
    options_in,
)
from fliplet_workers.config.problems import BROKEN, shown
from fliplet_workers.config.section import Section
from fliplet_workers.redaction import Secret

__all__ = ["OperationHook", "read_encrypt", "read_files", "read_operation", "read_settings"]

_SETTINGS = {fmt: options_in(("settings",), fmt) for fmt in ("yaml", "code")}
#: Options of every operation (read first), then those of only a push or only a pull.
_COMMON = tuple(o for o in options_in(("push", "pull")) if o.where == ("push", "pull"))
_ONLY = {kind: tuple(o for o in options_in((kind,)) if o.where == (kind,)) for kind in ("push", "pull")}


def _read(sec: Section, options: tuple[Option, ...], into: dict[str, Any]) -> None:
    """Read each option this section offers that has a parser; keep the values that are given."""
    for option in options:
        if option.parse is not None and option.name in sec.preferred:
            value = option.parse(sec, option.name)
            if value is not None:
                into[option.name] = value


def read_settings(sec: Section, fmt: Format) -> dict[str, Any]:
    """Config-level options of format ``fmt``, as ``Config`` keyword arguments (and a code config's
    ``batchSize``, the default of its push operations)."""
    out: dict[str, Any] = {}
    _read(sec, _SETTINGS[fmt], out)
    return out


OperationHook = Callable[[Section, str, dict[str, Any]], None]


def read_operation(
    sec: Section,
    kind: str,
    *,
    has_database: bool,
    default_batch_size: int = DEFAULT_BATCH_SIZE,
    hook: OperationHook | None = None,
) -> Operation | None:
    """One operation's options (shared by both formats). ``hook`` reads where rows come from and the
    callbacks (the code format); without it, a push takes its rows from ``query`` (the YAML format).
    ``None`` when a problem was found (reported)."""
    before = len(sec.report.problems)
    kwargs: dict[str, Any] = {"type": kind}
    _read(sec, _COMMON, kwargs)
    for name in PULL_ONLY if kind == "push" else PUSH_ONLY:
        if name in sec.preferred and sec.given(name):
            sec.problem(name, f"only applies to {'pull' if kind == 'push' else 'push'} operations")
    if kind == "push":
        kwargs["batch_size"] = default_batch_size
    for option in _ONLY[kind]:
        if option.parse is not None:
            _read(sec, (option,), kwargs)
        elif option.name == "files":
            kwargs["files"] = read_files(sec, "files") or ()
        elif option.name == "encrypt":
            kwargs["encrypt"] = read_encrypt(sec, "encrypt", kwargs.get("primary_column"))
    if kind == "push":
        _check_incremental(sec, kwargs)
    if hook is not None:
        hook(sec, kind, kwargs)
    elif kind == "push":
        kwargs["query"] = sec.text("query", required=True)
        if not has_database:
            sec.report.add(
                "a push operation needs a database: set 'database_driver' (and the other database_* "
                "options) or 'database_url'",
                (),
                sec.prefix,
            )
    if len(sec.report.problems) > before or "datasource_id" not in kwargs:
        return None
    return Operation(**kwargs)


def _check_incremental(sec: Section, kwargs: dict[str, Any]) -> None:
    """``incremental`` reads only newer rows and looks up only their keys, so it needs update mode (a
    replace run deletes what it did not read), a timestamp column (what "newer" means) and an exactly
    matched primary column (what is looked up); ``full_refresh`` only means something with it."""
    if not kwargs.get("incremental"):
        if kwargs.get("full_refresh") is not None:
            sec.problem("full_refresh", f"only applies with '{sec.name('incremental')}: true'")
        return
    needs = [("timestamp_column", "rows are read when it is after the last run's highest"),
             ("primary_column", "the rows read are looked up on Fliplet by key")]
    for option, why in needs:
        if kwargs.get(option) is None and not sec.given(option):
            sec.problem("incremental", f"needs '{sec.name(option)}' ({why})")
    if kwargs.get("mode") == "replace":
        sec.problem("incremental", "cannot be used with mode 'replace': a replace run deletes the entries the "
                                   "source no longer returns, and an incremental run reads only the newer rows "
                                   f"(use mode 'update', with '{sec.name('delete_column')}' to delete rows)")
    if kwargs.get("case_insensitive_primary_column"):
        sec.problem("incremental", f"cannot be used with '{sec.name('case_insensitive_primary_column')}': keys "
                                   "are looked up on Fliplet exactly as written")


def read_files(sec: Section, canonical: str) -> tuple[FileColumn, ...] | None:
    """``files``: one :class:`FileColumn` per item; ``None`` when any item is wrong (reported)."""
    items = sec.items(canonical)
    if items is None:
        return None if sec.has(canonical) else ()
    out: list[FileColumn] = []
    for item, at, label in items:
        if not isinstance(item, Mapping):
            sec.report.add(
                f"option '{label}' must be a mapping with 'column' and 'type', got {shown(item)}",
                at,
                sec.prefix,
            )
            continue
        entry = Section(sec.report, item, at, FILES, prefix=sec.prefix, display=f"{label}.")
        found = _read_file(entry)
        if found is not None:
            out.append(found)
    return tuple(out) if len(out) == len(items) else None


def _read_file(entry: Section) -> FileColumn | None:
    before = len(entry.report.problems)
    column = entry.text("column", required=True)
    kind = entry.choice("type", FILE_TYPES, required=True)
    directory = entry.text("directory")
    username = entry.text("username")
    password = entry.text("password")  # a secret: registered by the section
    file_type = entry.text("file_type")
    headers = _read_headers(entry)
    if kind is not None:
        _check_file_kind(entry, kind, username, password)
    if len(entry.report.problems) > before or column is None or kind is None:
        return None
    return FileColumn(
        column=column,
        type=kind,  # type: ignore[arg-type]  # one of FILE_TYPES
        directory=directory,
        headers=headers,
        username=username,
        password=Secret(password) if password is not None else None,
        file_type=file_type,
    )


def _read_headers(entry: Section) -> dict[str, Secret]:
    """A remote file's ``headers``: each value a secret (they carry tokens)."""
    headers: dict[str, Secret] = {}
    for header, value in (entry.mapping("headers") or {}).items():
        at_header = (*entry.where("headers"), header)
        text = value if isinstance(value, str) else entry.report.raw.get(at_header)
        if text is None and isinstance(value, int | float) and not isinstance(value, bool):
            text = str(value)
        if value is BROKEN:
            continue
        if not isinstance(text, str):
            entry.report.add(
                f"option '{entry.name('headers')}.{header}' must be a string", at_header, entry.prefix
            )
            continue
        if "headers" in entry.secret:
            redaction.register(text)
        headers[str(header)] = Secret(text)
    return headers


_FILE_OPTIONS_FOR = {
    "directory": "local",
    "headers": "remote",
    "username": "sharepoint",
    "password": "sharepoint",
    "file_type": "sharepoint",
}


def _check_file_kind(entry: Section, kind: str, username: str | None, password: str | None) -> None:
    """Options of one kind of file given for another, and sharepoint's required login."""
    for option, only_for in _FILE_OPTIONS_FOR.items():
        if only_for != kind and entry.given(option):
            entry.problem(option, f"does not apply to {kind} files")
    if kind == "sharepoint":
        for option, value in (("username", username), ("password", password)):
            if value is None and not entry.given(option):
                entry.problem(option, "is required for sharepoint files")


def read_encrypt(sec: Section, canonical: str, primary_column: str | None) -> Encryption | None:
    """``encrypt``: the fields, and a key or a salt (secrets); never the primary column."""
    enc = sec.section(canonical, ENCRYPT)
    if enc is None:
        return None
    before = len(sec.report.problems)
    fields = enc.strings("fields", non_empty=True)
    key = enc.text("key")  # secrets: registered by the section
    salt = enc.text("salt")
    if key is not None and salt is not None:
        enc.problem(
            "salt",
            f"cannot be used together with '{enc.name('key')}': the salt only protects a key Fliplet manages",
        )
    if fields and primary_column is not None and primary_column in fields:
        enc.problem(
            "fields", f"lists the primary column '{primary_column}': You cannot encrypt the Primary Key"
        )
    if len(sec.report.problems) > before or not fields:
        return None
    return Encryption(
        fields=fields, key=key if key is None else Secret(key), salt=salt if salt is None else Secret(salt)
    )
