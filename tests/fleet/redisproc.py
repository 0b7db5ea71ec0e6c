"""A redis-server configured like docker-compose.yml's (append-only file), that can be restarted on
the same port and data directory mid-test: what a Redis restart in production looks like to the fleet.
"""

from __future__ import annotations

import os
import shutil

from servers import RedisServer, _stop_popen


class RestartableRedis(RedisServer):
    """A redis-server that :meth:`restart` brings back on the same port and data directory."""

    def restart(self, lose_data: bool = False) -> None:
        """Graceful shutdown (SIGTERM: Redis flushes its AOF) and start again on the same port.
        ``lose_data``: remove the data first, as a Redis without persistence would come back."""
        _stop_popen(self.proc)
        if lose_data:
            for entry in os.listdir(self.base_dir):
                path = os.path.join(self.base_dir, entry)
                if entry.startswith("appendonly") or entry.endswith(".rdb"):
                    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        self._launch()


class PersistentRedis(RestartableRedis):
    """``--appendonly yes`` (``appendfsync everysec``, as in compose): a restart keeps the data."""

    name = "redis-aof"
    persistence = ("--appendonly", "yes", "--appendfsync", "everysec")


class VolatileRedis(RestartableRedis):
    """No persistence at all (``--appendonly no --save ""``): :meth:`restart` comes back empty, as a
    cache-style Redis does after a restart."""

    name = "redis-volatile"
