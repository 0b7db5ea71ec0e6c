"""The Fliplet REST API adapter.

* :mod:`.api`: ``FlipletApi``, the typed calls the rest of the package makes (a Protocol);
* :mod:`.client`: ``FlipletClient``, those calls over HTTP;
* :mod:`.memory`: ``MemoryApi``, the same calls in process on the sandbox's store, with injectable
  failures (for tests);
* :mod:`.failures`: what a failed call means (retry / unknown outcome / refused / fatal);
* :mod:`.sessions`: ``new_session``, the one place ``requests`` sessions are made;
* :mod:`.keystore` and :mod:`.media`: the encryption keystore and the file uploads, on ``FlipletApi``.

Nothing is imported here, so that ``fliplet_workers.errors`` can use :mod:`.failures` without a cycle.
"""
