"""Replicas on loopback, for the tests and benchmarks of replicas sharing a PostgreSQL
state: a throwaway PostgreSQL server (`PostgresServer`: ``initdb`` into a temporary
folder, listening on a unix socket there and on no TCP port, stopped and deleted
afterwards), HAProxy in front of the replicas (`HAProxy`), and `modrec serve` started
as a process once it is ready (`start_serve_process`, which `support.start_serve` wraps
for the tests and the benchmarks call directly).

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
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

INSTALL = ("install Debian's postgresql package (make test does, as root: it is in the "
           "Makefile's SYSTEM_TOOLS)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve_process(run: Path, state: Path | str, port: int, log: Path, *extra: str,
                        timeout: float = 120) -> subprocess.Popen[bytes]:
    """``modrec serve RUN --state STATE --port PORT EXTRA...`` as a process, once /readyz
    is 200 (its output appended to ``log``); RuntimeError, with the log, if it exits or
    is not ready within ``timeout`` seconds (then it is killed)."""
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "modrec", "serve", str(run), "--state", str(state),
         "--port", str(port), *extra], stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"modrec serve exited with {process.returncode}:\n"
                               f"{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"modrec serve did not become ready:\n{log.read_text()}")


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
        self.options = (f"-c listen_addresses='' -c unix_socket_directories={self.root} "
                        f"-c max_connections={max_connections} -c fsync=on")
        self.start()

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-o", self.options, "-l", str(self.log),
                  "-w", "-t", "60", "start")

    def crash(self) -> None:
        """Stop the server as a crash would: no checkpoint, every connection cut; the
        next `start` recovers from the WAL."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

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


HAPROXY_CONFIG = """\
global
    maxconn 2000
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    # A replica that refuses the connection (killed, restarting) has not seen the
    # request: try again, on another replica. A request it took and never answered is
    # not sent again (an event may not be written twice): the client gets a 502 and
    # nothing was acknowledged.
    retries 3
    option redispatch 1
    retry-on conn-failure
frontend modrec
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter 300ms fall 2 rise 2
{servers}
"""


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


class HAProxy:
    """HAProxy on ``127.0.0.1:port`` balancing over the replicas on ``backends`` (loopback
    ports), each checked on ``/readyz``; its config and log in ``folder``."""

    def __init__(self, port: int, backends: Sequence[int], folder: Path) -> None:
        binary = haproxy_binary()
        assert binary is not None, "no haproxy: install Debian's haproxy package"
        servers = "\n".join(f"    server r{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
        self.config = folder / "haproxy.cfg"
        self.config.write_text(HAPROXY_CONFIG.format(port=port, servers=servers))
        self.log = folder / "haproxy.log"
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([binary, "-db", "-f", str(self.config)],
                                        stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        self.wait_up()

    def wait_up(self, timeout: float = 30) -> None:
        """Until HAProxy answers ``/readyz`` with a replica's 200 (the replicas were
        ready before it started, and a server starts out up)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"haproxy did not come up: {self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
