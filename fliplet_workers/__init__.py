"""fliplet-workers: sync databases, APIs and files to Fliplet Data Sources.

The package is layered so that a newcomer can read it top-down:

* ``config``  — the typed model of a config file and its loaders (YAML, Python code configs).
* ``core``    — the pure, synchronous sync core: normalise rows, diff, batch, encrypt.
* ``sources`` / ``fliplet`` — the adapters around the core (databases and files; the Fliplet API).
* ``run``     — one run of one operation, end to end, used by the foreground agent and the fleet.
* ``fleet``   — the Celery app, beat schedule from configs, and thin tasks.
* ``sandbox`` — a local Fliplet-compatible HTTP server for offline runs and tests.
"""

__version__ = "0.1.0"
