"""The pure, synchronous sync core: no HTTP, no Celery, no database drivers in here."""
