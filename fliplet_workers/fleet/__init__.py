"""The fleet: the same sync as the foreground agent, spread over Celery workers on many hosts.

* :mod:`.settings` — environment variables; :mod:`.app` — the Celery app built from them.
* :mod:`.registry` — config names → files inside the config directory, validated and cached.
* :mod:`.schedule` — beat entries from every config's cron ``frequency``, one leader among beats.
* :mod:`.flow` — the steps of a run (plan, commit a batch, upload a file, finalize), Celery-free.
* :mod:`.tasks` — the thin Celery tasks around :mod:`.flow`.
* :mod:`.locks`, :mod:`.staging`, :mod:`.state`, :mod:`.history` — what lives in Redis, and
  :mod:`.keys` — where.
* :mod:`.status` — ``fliplet-agent status``.

Importing this package imports neither Celery nor Redis.
"""
