"""A throw-away PostgreSQL server for the tests: a real one, started from the binaries of
Debian's ``postgresql`` package (``.ci/run`` installs it), in a temporary folder, on a
free loopback port, with password authentication. Nothing is mocked.

PostgreSQL refuses to run as root; as root (as CI runs) the server runs as the
``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "liandan"
PASSWORD = "s3cret-pw"  # the tests check that it is never printed


def find_bin(name: str) -> str:
    """A PostgreSQL server program on PATH or in Debian's /usr/lib/postgresql/<v>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version)
    path = found[-1] if found else shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"PostgreSQL's {name} was not found: these tests need a real server; "
            "install it with `apt-get install -y postgresql` (.ci/run does)"
        )
    return path


def _version(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


@dataclass
class Server:
    port: int

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, database: str) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        return self.url(database)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[Server]:
    """Start a server in a temporary folder; stop it and remove the folder at the end."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    # a folder of its own under /tmp: pytest's tmp folders are closed to other users
    root = Path(tempfile.mkdtemp(prefix="liandan-pg-"))
    run_as: dict[str, int] = {}
    if os.geteuid() == 0:  # postgres will not run as root
        try:
            account = pwd.getpwnam("postgres")  # made by Debian's postgresql-common
        except KeyError:
            raise RuntimeError(
                "PostgreSQL will not run as root and there is no `postgres` user: "
                "run the tests as another user, or `apt-get install -y postgresql`"
            ) from None
        run_as = {"user": account.pw_uid, "group": account.pw_gid}
        os.chown(root, account.pw_uid, account.pw_gid)
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if run_as:
        os.chown(pwfile, run_as["user"], run_as["group"])
    data, log = root / "data", root / "server.log"
    env = {**os.environ, "LC_ALL": "C"}

    def call(*cmd: str) -> None:
        # cwd: a folder the server's user may enter (the checkout may be closed to it)
        proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, **run_as)  # type: ignore[call-overload]
        if proc.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}{tail}")

    port = _free_port()
    try:
        call(initdb, "-D", str(data), "-U", USER, "-A", "scram-sha-256",
             f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")  # fmt: skip
        # durability off: a test server, started and dropped within the session
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        call(pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "-t", "60", "start")
        try:
            yield Server(port)
        finally:
            call(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
