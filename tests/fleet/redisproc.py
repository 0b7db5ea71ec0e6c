"""A redis-server configured like docker-compose.yml's (append-only file), that can be restarted on
the same port and data directory mid-test: what a Redis restart in production looks like to the fleet.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from servers import RedisServer, ServerError, _stop_popen, tail, wait_until


class PersistentRedis(RedisServer):
    """``--appendonly yes`` (``appendfsync everysec``, as in compose); :meth:`restart` keeps the port."""

    name = "redis-aof"

    def _launch(self) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
               "--appendfsync", "everysec", "--daemonize", "no", "--dir", self.base_dir]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.base_dir)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise ServerError(f"redis-server exited with {proc.returncode}:\n{tail(self.log)}")
            return self._ping()

        wait_until(ready, f"Redis on port {self.port} (log: {self.log})")

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


class VolatileRedis(PersistentRedis):
    """No persistence at all (``--appendonly no --save ""``): :meth:`restart` comes back empty, as a
    cache-style Redis does after a restart."""

    name = "redis-volatile"

    def _launch(self) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--daemonize", "no", "--dir", self.base_dir]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.base_dir)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise ServerError(f"redis-server exited with {proc.returncode}:\n{tail(self.log)}")
            return self._ping()

        wait_until(ready, f"Redis on port {self.port} (log: {self.log})")
