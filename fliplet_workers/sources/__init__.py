"""Where rows come from: SQL databases (``sql``), HTTP APIs and files.

A source yields plain row dicts with Python values (Decimal, datetime, date, bytes, UUID, dict/list…);
``fliplet_workers.core.rows`` normalises them. Failures raise the typed errors of
``fliplet_workers.errors`` with secrets already redacted.
"""
