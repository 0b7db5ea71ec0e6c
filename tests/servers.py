"""Start and stop real database servers for the tests: PostgreSQL, MariaDB and Redis.

Each server runs on 127.0.0.1 on a free port with its data in a fresh temporary directory, and
is torn down (process stopped, directory removed) by :meth:`Server.stop`, which is also registered
with :mod:`atexit` as a safety net. Nothing here depends on pytest: ``conftest.py`` wraps these
classes in session fixtures, and benchmarks or scripts can use them directly::

    with PostgresServer() as pg:
        print(pg.params.url)

Binaries come from the Debian packages ``postgresql``, ``mariadb-server`` and ``redis-server``;
a missing one raises :class:`ServerError` naming the package to install.

PostgreSQL refuses to run as root, so when the tests run as root (as in CI) ``initdb`` and
``pg_ctl`` run as the ``postgres`` system user, on a data directory chowned to it. MariaDB runs as
root with ``--user=root``. Both get a password-protected account (``agent``) so tests can check
that a wrong password is refused.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

#: Bound on every wait loop (server start, stop, first connection), in seconds.
WAIT_SECONDS = 30.0
POLL_SECONDS = 0.1

#: The test account. The password has URL-special characters on purpose (``@``, ``:``, ``/``, ``%``)
#: so URL building is exercised against real servers; it is still a plain YAML scalar.
TEST_USER = "agent"
TEST_PASSWORD = "s3cret@:/%pw"
TEST_DB = "agent_test"


class ServerError(RuntimeError):
    """A server could not be started: the message says why and what to install or look at."""


@dataclass(frozen=True)
class DbParams:
    """How to reach a test database. ``driver`` is the agent's name for it (postgres, mysql)."""

    driver: str
    host: str
    port: int
    user: str
    password: str
    dbname: str

    @property
    def url(self) -> str:
        """A SQLAlchemy URL string with user and (percent-encoded) password."""
        dialect = {"postgres": "postgresql+psycopg2", "mysql": "mysql+pymysql"}[self.driver]
        suffix = "?charset=utf8mb4" if self.driver == "mysql" else ""
        return (
            f"{dialect}://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{self.dbname}{suffix}"
        )

    def options(self) -> dict[str, Any]:
        """The ``database_*`` options of a YAML config pointing at this database."""
        return {
            "database_driver": self.driver,
            "database_host": self.host,
            "database_port": self.port,
            "database_username": self.user,
            "database_password": self.password,
            "database_name": self.dbname,
        }


# --------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    """Call ``check`` every 0.1 s until it returns True; ServerError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL_SECONDS)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def find_binary(names: Sequence[str], package: str, extra_dirs: Sequence[str] = ("/usr/sbin", "/usr/bin")) -> str:
    """The first of ``names`` found on PATH or in ``extra_dirs``; ServerError naming the apt package."""
    for name in names:
        found = shutil.which(name) or next(
            (os.path.join(d, name) for d in extra_dirs if os.access(os.path.join(d, name), os.X_OK)), None
        )
        if found:
            return found
    raise ServerError(
        f"{' / '.join(names)} not found: install the Debian package {package!r} "
        f"(apt-get install -y {package}) to run these tests"
    )


def tail(path: str, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).rstrip()
    except OSError:
        return "(no log)"


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _port_in_use(text: str) -> bool:
    return bool(re.search(r"address already in use|could not bind|bind on tcp/ip port", text, re.IGNORECASE))


class Server:
    """Base class: a temp directory, a port, start/stop, context manager, atexit safety net."""

    name = "server"
    #: How many times to try another port when the chosen one was taken in the meantime.
    port_attempts = 3

    def __init__(self) -> None:
        self.base_dir = ""
        self.port = 0
        self._started = False

    def start(self) -> Server:
        if self._started:
            return self
        self.base_dir = tempfile.mkdtemp(prefix=f"fw-{self.name}-")
        atexit.register(self.stop)
        try:
            self._prepare()
            for attempt in range(1, self.port_attempts + 1):
                self.port = free_port()
                try:
                    self._launch()
                    break
                except ServerError as exc:
                    self._kill()
                    if attempt == self.port_attempts or not _port_in_use(str(exc)):
                        raise
            self._started = True
            self._after_start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server and remove its directory. Idempotent; never raises."""
        with contextlib.suppress(Exception):
            self._kill()
        self._started = False
        if self.base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = ""
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def path(self, *parts: str) -> str:
        return os.path.join(self.base_dir, *parts)

    # subclasses
    def _prepare(self) -> None:
        """One-time setup before the first launch (find binaries, init the data directory)."""

    def _launch(self) -> None:
        """Start the process on ``self.port`` and wait until it accepts connections."""
        raise NotImplementedError

    def _after_start(self) -> None:
        """Create accounts and databases."""

    def _kill(self) -> None:
        """Stop the process if running."""


def _run(cmd: Sequence[str], log: str, what: str, cwd: str | None = None, timeout: float = 120) -> None:
    """Run a setup command with its output appended to ``log``; ServerError with the log's tail."""
    with open(log, "ab") as out:
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ServerError(f"{what} timed out after {timeout:.0f}s:\n{tail(log)}") from None
    if proc.returncode != 0:
        raise ServerError(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail(log)}")


def _stop_popen(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# ------------------------------------------------------------------------------------ PostgreSQL


def postgres_bindir() -> str:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (or ``PG_BINDIR``, or ``initdb`` on PATH)."""
    override = os.environ.get("PG_BINDIR")
    if override:
        return override
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if candidates:

        def version(path: str) -> tuple[int, ...]:
            part = path.split("/")[4]
            return tuple(int(x) for x in re.findall(r"\d+", part)) or (0,)

        return os.path.dirname(max(candidates, key=version))
    on_path = shutil.which("initdb")
    if on_path:
        return os.path.dirname(on_path)
    raise ServerError(
        "PostgreSQL binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin: install the "
        "Debian package 'postgresql' (apt-get install -y postgresql) to run these tests"
    )


class PostgresServer(Server):
    """A throwaway PostgreSQL cluster. ``params`` reaches database ``agent_test`` as superuser ``agent``.

    ``pg_hba.conf``: scram-sha-256 over TCP (so a wrong password fails), trust on the Unix socket.
    """

    name = "postgres"

    def __init__(self) -> None:
        super().__init__()
        self.bindir = ""
        self.params = DbParams("postgres", "127.0.0.1", 0, TEST_USER, TEST_PASSWORD, TEST_DB)

    @property
    def data_dir(self) -> str:
        return self.path("data")

    @property
    def log(self) -> str:
        """The server's own log (written by the ``postgres`` user)."""
        return self.path("postgres.log")

    @property
    def setup_log(self) -> str:
        """Output of initdb / pg_ctl (written by us: a root-owned file the server must not need)."""
        return self.path("setup.log")

    def _as_owner(self, cmd: list[str]) -> list[str]:
        """Run as the ``postgres`` system user when we are root (PostgreSQL refuses root)."""
        if not is_root():
            return cmd
        runuser = shutil.which("runuser") or ("/usr/sbin/runuser" if os.path.exists("/usr/sbin/runuser") else "")
        if runuser:
            return [runuser, "-u", "postgres", "--", *cmd]
        return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(cmd)]

    def _prepare(self) -> None:
        self.bindir = postgres_bindir()
        for tool in ("initdb", "pg_ctl"):
            if not os.access(os.path.join(self.bindir, tool), os.X_OK):
                raise ServerError(f"{tool} not found in {self.bindir}: install the Debian package 'postgresql'")
        pwfile = self.path("pwfile")
        with open(pwfile, "w", encoding="utf-8") as fh:
            fh.write(TEST_PASSWORD + "\n")
        os.mkdir(self.path("sock"))
        if is_root():
            try:
                import pwd

                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerError(
                    "running as root but there is no 'postgres' system user to run PostgreSQL as: "
                    "install the Debian package 'postgresql', which creates it"
                ) from None
            for root, dirs, files in os.walk(self.base_dir):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(name, entry.pw_uid, entry.pw_gid)
        _run(
            self._as_owner([
                os.path.join(self.bindir, "initdb"), "-D", self.data_dir, "-U", TEST_USER,
                f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            ]),
            self.setup_log, "initdb", cwd=self.base_dir,
        )
        os.remove(pwfile)

    def _launch(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.path('sock')} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        cmd = [
            os.path.join(self.bindir, "pg_ctl"), "-D", self.data_dir, "-l", self.log,
            "-w", "-t", str(int(WAIT_SECONDS)), "-o", options, "start",
        ]
        try:
            _run(self._as_owner(cmd), self.setup_log, "pg_ctl start", cwd=self.base_dir, timeout=WAIT_SECONDS + 10)
        except ServerError as exc:
            raise ServerError(f"{exc}\nserver log:\n{tail(self.log)}") from None
        self.params = DbParams("postgres", "127.0.0.1", self.port, TEST_USER, TEST_PASSWORD, TEST_DB)

    def _after_start(self) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=TEST_USER, password=TEST_PASSWORD,
            dbname="postgres", connect_timeout=10,
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{TEST_DB}"')
        finally:
            conn.close()

    def _kill(self) -> None:
        if not self.bindir or not os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            return
        cmd = [os.path.join(self.bindir, "pg_ctl"), "-D", self.data_dir, "-m", "fast", "-w",
               "-t", str(int(WAIT_SECONDS)), "stop"]
        try:
            _run(self._as_owner(cmd), self.setup_log, "pg_ctl stop", cwd=self.base_dir, timeout=WAIT_SECONDS + 10)
        except ServerError:
            # pg_ctl could not stop it: kill the postmaster we started, by its pid.
            with open(os.path.join(self.data_dir, "postmaster.pid"), encoding="ascii") as fh:
                pid = int(fh.readline().strip())
            os.kill(pid, 9)


# --------------------------------------------------------------------------------------- MariaDB


class MariaDBServer(Server):
    """A throwaway MariaDB server. ``params`` reaches database ``agent_test`` as ``agent``@``127.0.0.1``.

    ``agent`` has every privilege (it may create other databases); root has no password and is only
    reachable on the Unix socket in the temp directory.
    """

    name = "mariadb"

    def __init__(self) -> None:
        super().__init__()
        self.mariadbd = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.params = DbParams("mysql", "127.0.0.1", 0, TEST_USER, TEST_PASSWORD, TEST_DB)

    @property
    def data_dir(self) -> str:
        return self.path("data")

    @property
    def socket_path(self) -> str:
        return self.path("mysqld.sock")

    @property
    def log(self) -> str:
        return self.path("mariadb.log")

    def _user_args(self) -> list[str]:
        return ["--user=root"] if is_root() else []

    def _prepare(self) -> None:
        self.mariadbd = find_binary(["mariadbd", "mysqld"], "mariadb-server")
        install_db = find_binary(["mariadb-install-db", "mysql_install_db"], "mariadb-server")
        _run(
            [install_db, "--no-defaults", f"--datadir={self.data_dir}", "--auth-root-authentication-method=normal",
             "--skip-test-db", "--skip-name-resolve", *self._user_args()],
            self.log, "mariadb-install-db", cwd=self.base_dir,
        )

    def _launch(self) -> None:
        cmd = [
            self.mariadbd, "--no-defaults", f"--datadir={self.data_dir}", f"--socket={self.socket_path}",
            f"--port={self.port}", "--bind-address=127.0.0.1", f"--pid-file={self.path('mariadb.pid')}",
            f"--log-error={self.log}", f"--tmpdir={self.base_dir}", "--skip-name-resolve", "--skip-log-bin",
            "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0", "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci", *self._user_args(),
        ]
        with open(self.path("mariadbd.out"), "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.base_dir)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise ServerError(
                    f"mariadbd exited with {proc.returncode}:\n{tail(self.log)}\n{tail(self.path('mariadbd.out'))}"
                )
            return self._root_connect() is not None

        wait_until(ready, f"MariaDB on port {self.port} (log: {self.log})")
        self.params = DbParams("mysql", "127.0.0.1", self.port, TEST_USER, TEST_PASSWORD, TEST_DB)

    def _root_connect(self) -> Any:
        import pymysql

        try:
            return pymysql.connect(unix_socket=self.socket_path, user="root", connect_timeout=2, autocommit=True)
        except pymysql.err.MySQLError:
            return None

    def _after_start(self) -> None:
        conn = self._root_connect()
        if conn is None:
            raise ServerError(f"cannot connect to MariaDB as root on {self.socket_path}:\n{tail(self.log)}")
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{TEST_DB}` CHARACTER SET utf8mb4")
                for host in ("127.0.0.1", "localhost"):
                    cur.execute(f"CREATE USER '{TEST_USER}'@'{host}' IDENTIFIED BY %s", (TEST_PASSWORD,))
                    cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{TEST_USER}'@'{host}' WITH GRANT OPTION")
        finally:
            conn.close()

    def _kill(self) -> None:
        _stop_popen(self.proc)
        self.proc = None


# ----------------------------------------------------------------------------------------- Redis


class RedisServer(Server):
    """A throwaway Redis server without persistence. ``url`` is ``redis://127.0.0.1:<port>/0``."""

    name = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.binary = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        return self.path("redis.log")

    def _prepare(self) -> None:
        self.binary = find_binary(["redis-server"], "redis-server")

    #: How the server keeps its data: none by default (a subclass may turn the append-only file on).
    persistence: tuple[str, ...] = ("--appendonly", "no")

    def _launch(self) -> None:
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *self.persistence,
            "--daemonize", "no", "--dir", self.base_dir,
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.base_dir)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise ServerError(f"redis-server exited with {proc.returncode}:\n{tail(self.log)}")
            return self._ping()

        wait_until(ready, f"Redis on port {self.port} (log: {self.log})")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _kill(self) -> None:
        _stop_popen(self.proc)
        self.proc = None


# --------------------------------------------------------------------------------------- freezing


def server_pids(server: PostgresServer | MariaDBServer) -> list[int]:
    """The PIDs of a running server we started: its main process (from its pid file) and every child
    (PostgreSQL's backends and helpers), so that all of them can be stopped and continued."""
    import psutil

    pid_file = (os.path.join(server.data_dir, "postmaster.pid") if isinstance(server, PostgresServer)
                else server.path("mariadb.pid"))
    with open(pid_file, encoding="ascii") as fh:
        main = psutil.Process(int(fh.readline().strip()))
    return [main.pid, *(child.pid for child in main.children(recursive=True))]


@contextlib.contextmanager
def frozen(server: PostgresServer | MariaDBServer) -> Iterator[list[int]]:
    """SIGSTOP every process of ``server`` (a dedicated instance: others' tests must not freeze), and
    SIGCONT them on the way out, whatever happened. The kernel still accepts and acknowledges TCP on
    their sockets, exactly like a hung server: nothing answers."""
    pids = server_pids(server)
    stopped: list[int] = []
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield stopped
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
