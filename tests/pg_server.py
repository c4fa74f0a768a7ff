"""A throwaway PostgreSQL server for the tests and benchmarks of the PostgreSQL user
state: ``initdb`` into a temporary folder, listening on a unix socket there and on no
TCP port, stopped and deleted afterwards.

PostgreSQL refuses to run as root, and the tests (and CI) run as root on the
development machines: there the server runs as the ``postgres`` user that Debian's
``postgresql`` package creates, through ``runuser``, in a folder handed to that user.
Any other user runs it as itself. Where the binaries or that user do not exist,
`unavailable` says why and what installs them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

INSTALL = ("install Debian's postgresql package (make test does, as root: it is in the "
           "Makefile's SYSTEM_TOOLS)")


def binaries() -> Path | None:
    """The newest PostgreSQL server's bin folder (Debian keeps it off the PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def unavailable() -> str | None:
    """Why no server can be started here (None: one can)."""
    if binaries() is None:
        return f"no PostgreSQL server binaries (initdb, pg_ctl): {INSTALL}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return ("running as root, and PostgreSQL will not run as root; there is no "
                    f"postgres user to run it as: {INSTALL}, which creates one")
        if shutil.which("runuser") is None:
            return "running as root without runuser (util-linux) to run PostgreSQL as postgres"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install 'modrec[serve]'"
    return None


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; `database` makes an empty database
    and returns its URL."""

    def __init__(self, max_connections: int = 300) -> None:
        bin_dir = binaries()
        assert bin_dir is not None, unavailable()
        self.bin = bin_dir
        # Short: a unix socket's path may not pass 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="modrec-pg-", dir="/tmp"))
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._run("initdb", "-D", str(self.data), "-U", "modrec", "-A", "trust", "-E", "UTF8",
                  "--no-sync")  # the cluster's files; durability is the server's own fsync
        options = (f"-c listen_addresses='' -c unix_socket_directories={self.root} "
                   f"-c max_connections={max_connections} -c fsync=on")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w",
                  "-t", "60", "start")

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run([*self.as_user, str(self.bin / program), *args],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr}{log}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://modrec@/{database}?host={self.root}"

    def database(self, prefix: str = "test") -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
