"""A throwaway PostgreSQL cluster (Debian's ``postgresql`` binaries: ``initdb`` + ``pg_ctl``) on a free
loopback port, for tests that need MLflow's tracking server on a real database. No system service, no
root-owned state: the cluster lives in a temp folder and is stopped and removed afterwards. PostgreSQL
refuses to run as root, so under root it runs as the ``postgres`` user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.servers import free_port


def binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass
class Postgres:
    folder: Path
    port: int
    user: str
    bin: Path

    def uri(self, db: str) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{db}"

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if os.getuid() == 0 else []
        return subprocess.run([*prefix, *cmd], capture_output=True, text=True, check=True, timeout=120)

    def createdb(self, name: str) -> None:
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def start() -> Postgres:
    """initdb a cluster in a new temp folder and start it on a free 127.0.0.1 port (trust auth, loopback)."""
    bin_ = binaries()
    if bin_ is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    user = "postgres" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
    folder = Path(tempfile.mkdtemp(prefix="ganops-pg-"))
    if os.getuid() == 0:
        shutil.chown(folder, user)
    pg = Postgres(folder, 0, user, bin_)
    data = folder / "data"
    pg._run(str(bin_ / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8")
    for attempt in range(3):  # the free port can be taken before PostgreSQL binds it: try another
        pg.port = free_port()
        try:
            # listen on loopback only; the socket directory in the cluster's folder (not /var/run/postgresql)
            pg._run(str(bin_ / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "log"), "-o",
                    f"-c listen_addresses=127.0.0.1 -p {pg.port} -k {folder}", "start")  # fmt: skip
            return pg
        except subprocess.CalledProcessError:
            if attempt == 2:
                shutil.rmtree(folder, ignore_errors=True)
                raise
    raise AssertionError("unreachable")
