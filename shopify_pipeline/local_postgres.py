"""A throwaway PostgreSQL for the fleet tests and benchmarks: Debian's `postgresql` package, a fresh data
directory on a free loopback port, stopped and deleted when the `with` block ends.

    with LocalPostgres() as server:
        server.url        # postgresql://postgres@127.0.0.1:PORT/dagster (trust auth, loopback only)

PostgreSQL refuses to run as root, so as root (CI) `initdb` and `postgres` run as the `postgres` system user
that the Debian package creates, through `runuser`. Production uses a managed PostgreSQL (RDS): the same
dagster-postgres storage block with a real host and password.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from shopify_pipeline.errors import PermanentError

DEBIAN_ROOT = Path("/usr/lib/postgresql")
DATABASE = "dagster"
SYSTEM_USER = "postgres"
INSTALL_HINT = "install Debian's PostgreSQL: `apt-get install -y postgresql` (scripts/ensure-prerequisites.sh does)"


class LocalPostgresError(PermanentError):
    """PostgreSQL could not be found or started; the message says what to do."""


def postgres_bin_dir(root: Path = DEBIAN_ROOT) -> Path:
    """The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` and `postgres`; LocalPostgresError
    saying how to install it when there is none."""
    versions = sorted((p for p in root.glob("*/bin") if (p / "initdb").exists() and (p / "postgres").exists()),
                      key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0])
    if not versions:
        raise LocalPostgresError(f"no PostgreSQL server under {root}/<version>/bin: {INSTALL_HINT}")
    return versions[-1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalPostgres:
    """`postgres` on a free loopback port with a new data directory, for as long as the `with` block runs.

    `max_connections` is PostgreSQL's setting: dagster-postgres opens a connection per storage call (no pool),
    so a fleet of run processes needs more than the default 100. Other settings are PostgreSQL's defaults
    (fsync on), so timings are those of a durable database."""

    def __init__(self, port: int | None = None, max_connections: int = 300, start_timeout: float = 60.0) -> None:
        self.port = port or _free_port()
        self.max_connections = max_connections
        self.start_timeout = start_timeout
        self.url = f"postgresql://{SYSTEM_USER}@127.0.0.1:{self.port}/{DATABASE}"
        self._dir: Path | None = None
        self._process: subprocess.Popen | None = None
        self._bin: Path | None = None
        self._log = None

    def _as_owner(self, command: list[str]) -> list[str]:
        """`command` as the postgres system user when we are root (PostgreSQL refuses root)."""
        if os.geteuid() != 0:
            return command
        if shutil.which("runuser") is None:
            raise LocalPostgresError("running as root, and `runuser` (util-linux) is missing to start PostgreSQL "
                                     f"as the {SYSTEM_USER} user")
        return ["runuser", "-u", SYSTEM_USER, "--", *command]

    def __enter__(self) -> LocalPostgres:
        self._bin = postgres_bin_dir()
        # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
        self._dir = Path(tempfile.mkdtemp(prefix="shopify-pipeline-pg-"))
        if os.geteuid() == 0:
            try:
                shutil.chown(self._dir, SYSTEM_USER, SYSTEM_USER)
            except LookupError:
                shutil.rmtree(self._dir, ignore_errors=True)
                raise LocalPostgresError(f"running as root and there is no `{SYSTEM_USER}` system user to run "
                                         f"PostgreSQL as: {INSTALL_HINT}") from None
        data = self._dir / "data"
        done = subprocess.run(
            self._as_owner([str(self._bin / "initdb"), "-D", str(data), "-U", SYSTEM_USER, "-A", "trust",
                            "-E", "UTF8", "--locale=C", "--no-sync"]),
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            self._cleanup()
            raise LocalPostgresError(f"initdb failed (code {done.returncode}): {done.stderr.strip()[-1000:]}")
        self._log = (self._dir / "postgres.log").open("wb")
        self._process = subprocess.Popen(
            self._as_owner([str(self._bin / "postgres"), "-D", str(data), "-p", str(self.port),
                            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self._dir}",
                            "-c", f"max_connections={self.max_connections}"]),
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                log = self.log_tail()
                self.__exit__()
                raise LocalPostgresError(f"postgres exited at start (code {self._process.returncode}): {log}")
            if self._ready():
                self._create_database()
                return self
            time.sleep(0.2)
        self.__exit__()
        raise LocalPostgresError(f"postgres did not accept connections on port {self.port} within "
                                 f"{self.start_timeout:.0f} s")

    def _ready(self) -> bool:
        done = subprocess.run([str(self._bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
                              check=False)
        return done.returncode == 0

    def _create_database(self) -> None:
        done = self.psql("postgres", f"CREATE DATABASE {DATABASE}")
        if "CREATE DATABASE" not in done:
            raise LocalPostgresError(f"could not create the database {DATABASE}: {done}")

    def psql(self, database: str, sql: str) -> str:
        """Run `sql` with psql over TCP; return its unaligned output (rows as `a|b`)."""
        done = subprocess.run(
            [str(self._bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SYSTEM_USER, "-d", database,
             "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise LocalPostgresError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log (for error messages)."""
        try:
            return (self._dir / "postgres.log").read_text(errors="replace")[-chars:]
        except (OSError, TypeError):
            return ""

    def server_pid(self) -> int:
        """The postmaster's process id (its CPU time includes that of the backends it reaped)."""
        return int((self._dir / "data" / "postmaster.pid").read_text().split()[0])

    def postgres_db(self) -> dict:
        """dagster-postgres's `postgres_db` block for this server. The scheme names psycopg2, the driver
        dagster-postgres installs: SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3, which is absent."""
        return {"username": SYSTEM_USER, "password": "", "hostname": "127.0.0.1", "db_name": DATABASE,
                "port": self.port, "scheme": "postgresql+psycopg2"}

    def __exit__(self, *exc: object) -> None:
        if self._process is not None and self._process.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to disconnect); to the
            # whole group, so that it reaches the server under runuser too.
            os.killpg(self._process.pid, signal.SIGINT)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
