"""One sync pipeline for both agents: spec → plan → batch steps → sink.

* :mod:`.spec`: what to do (:class:`~.spec.RunSpec`, immutable) and with what
  (:class:`~.spec.Resources`: the API, the database, the log);
* :mod:`.plan`: source rows and the remote index → typed batches (the pure core's planner and cutter);
* :mod:`.steps`: the batch steps (files, encryption), built once per run, each with its own state;
* :mod:`.commit`: one batch committed with retries that never duplicate inserts;
* :mod:`.sinks`: where batches go: :class:`~.sinks.LocalSink` commits them in this process; the fleet's
  ``StagingSink`` stages them in Redis for its Celery workers. That is the only difference;
* :mod:`.push` / :mod:`.pull`: one operation; :mod:`.agent`: a config's operations, in the foreground.
"""
