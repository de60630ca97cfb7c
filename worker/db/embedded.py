"""A throw-away local PostgreSQL for when no database URL is configured.

Binaries come from the ``pgserver`` wheel (PostgreSQL 16) when it is installed, else from a PostgreSQL
installation on PATH or under /usr/lib/postgresql/*/bin. We run ``initdb`` and ``pg_ctl`` ourselves (rather
than pgserver's own manager) so the server listens on a loopback TCP port that every client, the demo's
printed URL and the daemon's reconnect tests can use, and so that it can be stopped and started on demand.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

NO_SERVER_MESSAGE = (
    "no PostgreSQL available: DATABASE_URL is not set, the 'pgserver' package is not installed and no "
    "PostgreSQL binaries (initdb, pg_ctl) were found on PATH or under /usr/lib/postgresql/*/bin.\n"
    "Fix: set DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DBNAME, or run `make install` "
    "(it installs pgserver), or install PostgreSQL (e.g. apt-get install postgresql)."
)


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be found or started; the message says how to fix it."""


def find_binaries() -> Path | None:
    """The directory holding initdb and pg_ctl: pgserver's first, then the system's."""
    # Located without importing pgserver: its import has side effects (runtime dirs, warnings).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "pginstall" / "bin"
            if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
                return candidate
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(directory, "initdb").exists() and Path(directory, "pg_ctl").exists():
            return Path(directory)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unprivileged_user() -> pwd.struct_passwd:
    """postgres refuses to run as root: pick (or create) a system user to run it as."""
    for name in ("postgres", "autopromote-pg"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    with contextlib.suppress(FileNotFoundError, subprocess.CalledProcessError):
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "autopromote-pg"],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam("autopromote-pg")
    return pwd.getpwnam("nobody")


def _make_readable(path: Path) -> None:
    """Let the unprivileged user reach the binaries and libraries (pip installs them root-only at times)."""
    for root, dirs, files in os.walk(path.parent):
        for name in dirs + files:
            p = Path(root, name)
            with contextlib.suppress(OSError):
                mode = p.stat().st_mode
                p.chmod(mode | 0o055 if p.is_dir() or mode & 0o100 else mode | 0o044)
    node = path
    while node != node.parent:
        with contextlib.suppress(OSError):
            mode = node.stat().st_mode
            if not mode & 0o001:
                node.chmod(mode | 0o011)
        node = node.parent


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:<port>."""

    bin_dir: Path
    data_dir: Path
    port: int
    user: str = "postgres"
    _run_as: pwd.struct_passwd | None = None
    _base_dir: Path | None = None
    startup_seconds: float = 0.0
    _stopped: bool = field(default=False, repr=False)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        cwd = str(self.data_dir.parent)
        if self._run_as is None:
            return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
        return subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            check=False,
            user=self._run_as.pw_uid,
            group=self._run_as.pw_gid,
            extra_groups=[],
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        log = self.data_dir.parent / "postgres.log"
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='{self.data_dir.parent}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
            "-c shared_buffers=128MB"
        )
        result = self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        if result.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise EmbeddedPostgresError(f"embedded PostgreSQL failed to start: {result.stderr.strip()}\n{tail}")
        self._stopped = False

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (idempotent)."""
        if self._stopped:
            return
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])
        self._stopped = True

    def cleanup(self) -> None:
        """Stop the server and delete its files."""
        with contextlib.suppress(Exception):
            self.stop("immediate" if self._stopped is False else "fast")
        if self._base_dir is not None:
            shutil.rmtree(self._base_dir, ignore_errors=True)


_active: list[EmbeddedPostgres] = []


def _cleanup_all() -> None:
    while _active:
        _active.pop().cleanup()


def _install_signal_cleanup() -> None:
    """Stop the servers on SIGTERM/SIGHUP too (atexit does not run on an unhandled signal)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(signum)
        if previous not in (signal.SIG_DFL, None):
            continue  # someone (the daemon) handles it and will exit normally, running atexit

        def handler(sig: int, frame: FrameType | None, _prev: object = previous) -> None:
            _cleanup_all()
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signum, handler)


def start_embedded(bin_dir: Path | None = None) -> EmbeddedPostgres:
    """initdb + start a throw-away cluster; it is stopped and deleted when the process exits."""
    bin_dir = bin_dir or find_binaries()
    if bin_dir is None:
        raise EmbeddedPostgresError(NO_SERVER_MESSAGE)
    base = Path(tempfile.mkdtemp(prefix="autopromote-pg-"))
    data = base / "data"
    run_as: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        run_as = _unprivileged_user()
        _make_readable(bin_dir)
        os.chown(base, run_as.pw_uid, run_as.pw_gid)
        base.chmod(0o700)
    server = EmbeddedPostgres(bin_dir=bin_dir, data_dir=data, port=_free_port(), _run_as=run_as, _base_dir=base)
    t0 = time.monotonic()
    result = server._run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        ],
        timeout=120,
    )
    if result.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise EmbeddedPostgresError(f"initdb failed: {result.stderr.strip()}\n{NO_SERVER_MESSAGE}")
    _active.append(server)
    if len(_active) == 1:
        atexit.register(_cleanup_all)
        _install_signal_cleanup()
    for attempt in range(3):
        try:
            server.start()
            break
        except EmbeddedPostgresError:
            if attempt == 2:
                raise
            server.port = _free_port()  # lost a race for the port
    server.startup_seconds = time.monotonic() - t0
    return server
