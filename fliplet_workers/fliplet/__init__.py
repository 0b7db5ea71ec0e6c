"""The Fliplet REST API adapter: one requests session per run, errors turned into typed exceptions."""

from fliplet_workers.fliplet.client import FlipletClient, base_url_for

__all__ = ["FlipletClient", "base_url_for"]
