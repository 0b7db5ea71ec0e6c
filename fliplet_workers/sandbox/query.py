"""Fliplet's ``where`` language (Sequelize operators) over an entry's data, as predicates.

Why apart from the store: it is pure (no lock, no state), the API's ``data/query`` and the console's
search both use it, and it is the part most worth testing on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from fliplet_workers.sandbox.basics import bad_request

Predicate = Callable[[Mapping[str, Any]], bool]

_COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _like_regex(pattern: Any, ignore_case: bool) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise bad_request("$like needs a string pattern")
    parts = []
    for char in pattern:
        parts.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _compare(op: Callable[[Any, Any], bool], arg: Any) -> Predicate:
    def pred(value: Any) -> bool:
        if value is None or arg is None:
            return False
        try:
            return bool(op(value, arg))
        except TypeError:  # "a" > 1: SQL would not match either
            return False

    return pred


def _operator(op: str, arg: Any) -> Callable[[Any], bool]:
    """One Sequelize operator applied to a column value."""
    if op == "$eq":
        return lambda v: v == arg
    if op == "$ne":
        return lambda v: v != arg
    if op in ("$in", "$notIn", "$nin"):
        if not isinstance(arg, list):
            raise bad_request(f"{op} needs a list")
        keys = list(arg)
        try:
            keyset: frozenset[Any] | None = frozenset(keys)  # a set: $in with 1,000 keys over 1M entries
        except TypeError:  # a list or mapping among the values: compare one by one
            keyset = None

        def member(v: Any) -> bool:
            if keyset is None:
                return v in keys
            try:
                return v in keyset
            except TypeError:  # an unhashable data value equals no hashable key
                return False

        if op == "$in":
            return member
        return lambda v: not member(v)
    if op in _COMPARATORS:
        return _compare(_COMPARATORS[op], arg)
    if op in ("$like", "$iLike", "$notLike", "$notILike"):
        rx = _like_regex(arg, ignore_case=op.lower().endswith("ilike"))
        negate = op.startswith("$not")

        def like(v: Any) -> bool:
            hit = v is not None and rx.fullmatch(v if isinstance(v, str) else str(v)) is not None
            return hit != negate

        return like
    raise bad_request(f"Unsupported query operator: {op}")


def _column_predicate(column: str, cond: Any) -> Predicate:
    if isinstance(cond, dict) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
        tests = [_operator(op, arg) for op, arg in cond.items()]
    elif isinstance(cond, list):
        tests = [_operator("$in", cond)]
    else:
        tests = [_operator("$eq", cond)]
    return lambda data: all(test(data.get(column)) for test in tests)


def single_in(where: Any) -> tuple[str, frozenset[Any]] | None:
    """``{"col": {"$in": [hashable keys]}}`` alone (a keyed lookup): its column and keys, so that the
    store scans with one dict lookup and one set lookup per entry instead of the predicate chain."""
    if not isinstance(where, dict) or len(where) != 1:
        return None
    (column, cond), = where.items()
    if column.startswith("$") or not isinstance(cond, dict) or list(cond) != ["$in"] or \
            not isinstance(cond["$in"], list):
        return None
    try:
        return column, frozenset(cond["$in"])
    except TypeError:
        return None


def select(rows: list[Any], where: Any, match: Predicate) -> list[Any]:
    """The entries of ``rows`` whose data ``match`` (compiled from ``where``); a keyed lookup
    (:func:`single_in`) takes a set lookup per entry instead of the predicate chain."""
    keyed = single_in(where)
    if keyed is not None:
        column, keys = keyed
        try:
            return [e for e in rows if e["data"].get(column) in keys]
        except TypeError:  # a list or mapping as some entry's value: the general path decides
            pass
    return [e for e in rows if match(e["data"])]


def compile_where(where: Any) -> Predicate:
    """Turn a Sequelize-style ``where`` on data columns into a predicate on an entry's ``data``.

    Supports ``{"col": value}``, a list value (``IN``), the operators ``$eq $ne $in $notIn $gt $gte
    $lt $lte $like $iLike $notLike $notILike`` and the combinators ``$or`` / ``$and`` (lists of wheres).
    """
    if where is None:
        return lambda data: True
    if not isinstance(where, dict):
        raise bad_request("where must be an object")
    preds: list[Predicate] = []
    for key, cond in where.items():
        if key in ("$or", "$and"):
            if not isinstance(cond, list):
                raise bad_request(f"{key} needs a list")
            subs = [compile_where(c) for c in cond]
            preds.append(_any_of(subs) if key == "$or" else _all_of(subs))
        elif key.startswith("$"):
            raise bad_request(f"Unsupported query operator: {key}")
        else:
            preds.append(_column_predicate(key, cond))
    return _all_of(preds)


def _any_of(preds: list[Predicate]) -> Predicate:
    return lambda data: any(p(data) for p in preds)


def _all_of(preds: list[Predicate]) -> Predicate:
    return lambda data: all(p(data) for p in preds)

