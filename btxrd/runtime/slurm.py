"""A real single-node Slurm cluster on this machine, to try the cluster path and to test it.

    python -m btxrd.runtime.slurm --dir .slurm      # `make slurm`; Ctrl-C (or SIGTERM) stops it

Five daemons, all bound to 127.0.0.1 and kept in one folder (configuration, state, logs):
munged (its own key and socket), MariaDB and slurmdbd (job accounting: submitit reads a job's
state with ``sacct``; without accounting a cancelled job's state stays UNKNOWN and the launcher
would wait for it for ever), slurmctld and slurmd. One partition, ``btxrd``, with this machine's
CPUs and 90% of its memory. Clients (``sbatch``, ``squeue``, submitit) find the cluster through
``SLURM_CONF``, which the helper prints. Stopping cancels the jobs left, then stops every daemon.

Debian's packages (slurm-wlm, slurmdbd, munge, mariadb-server) must be installed: `make slurm`
installs the missing ones (that needs root); the daemons themselves run as the current user.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from btxrd.errors import ConfigError
from btxrd.runtime.daemons import log_tail, serve_until_stopped, start_daemon, stop_daemon, wait_while

HOST = "127.0.0.1"
PARTITION = "btxrd"
CLUSTER = "btxrd"
DAEMONS = {
    "munged": "munge",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "slurmdbd": "slurmdbd",
    "slurmctld": "slurm-wlm",
    "slurmd": "slurm-wlm",
}  # binary -> Debian package
DB_USER, DB_PASSWORD, DB_NAME = "slurm", "btxrd", "slurm_acct_db"
SOCKET_PATH_MAX = 100  # Unix socket paths: 108 bytes on Linux, less a margin


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise ConfigError(f"{name} not found: install Debian's {DAEMONS.get(name, name)} (make slurm does, as root)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ConfigError("/proc/meminfo has no MemTotal")


class LocalSlurm:
    """The cluster in ``folder``; ``start()`` returns once the node is idle, ``stop()`` leaves no daemon."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).resolve()
        self.conf = self.folder / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]  # slurmd knows itself by its short host name
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.user = getpass.getuser()

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs to use this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _daemon_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def _start(self, name: str, command: list[str]) -> None:
        self.processes[name] = start_daemon(command, self.folder / f"{name}.log", self._daemon_env())

    def _run(self, command: list[str], what: str) -> str:
        done = subprocess.run(command, capture_output=True, text=True, env=self._daemon_env(), timeout=60)
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
            raise ConfigError(f"{what} failed: {detail[0]} (logs in {self.folder})")
        return done.stdout

    def _wait(self, what: str, ready, timeout_s: float = 60.0) -> None:
        """Poll ``ready()`` until true; a daemon that exits meanwhile ends the wait with its log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    log = self.folder / f"{name}.log"
                    raise ConfigError(
                        f"{name} exited ({process.returncode}) while waiting for {what}: "
                        f"{log_tail(log, 3)} (log: {log})"
                    )
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                if ready():
                    return
            time.sleep(0.3)
        raise ConfigError(f"local Slurm: no {what} within {timeout_s:.0f} s (logs in {self.folder})")

    def start(self) -> None:
        for name in DAEMONS:
            _binary(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o711)  # munged: its socket folder must be reachable by all, writable by none but us
        munge_socket = self.folder / "munge.socket"
        if len(str(munge_socket)) > SOCKET_PATH_MAX:
            raise ConfigError(f"{self.folder}: path too long for a Unix socket; pick a shorter --dir")
        ports = {name: _free_port() for name in ("db", "dbd", "ctld", "d")}
        try:
            self._start_munge(munge_socket)
            self._start_database(ports["db"])
            self._write_configs(munge_socket, ports)
            self._start("slurmdbd", [_binary("slurmdbd"), "-D"])
            self._wait("slurmdbd", lambda: "slurmdbd version" in log_tail(self.folder / "slurmdbd.log", 50))
            clusters = self._run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"], "sacctmgr list")
            if CLUSTER not in clusters.split():
                self._run(["sacctmgr", "-i", "add", "cluster", CLUSTER], "sacctmgr add cluster")
            shutil.rmtree(self.folder / "state", ignore_errors=True)  # a fresh controller: no jobs of earlier runs
            shutil.rmtree(self.folder / "spool", ignore_errors=True)
            (self.folder / "state").mkdir()
            (self.folder / "spool").mkdir()
            self._start("slurmctld", [_binary("slurmctld"), "-D", "-f", str(self.conf)])
            self._start("slurmd", [_binary("slurmd"), "-D", "-f", str(self.conf)])
            self._wait(
                f"idle node in sinfo ({self.node})",
                lambda: self._run(["sinfo", "-h", "-n", self.node, "-o", "%T"], "sinfo").strip() == "idle",
            )
        except BaseException:
            self.stop()
            raise

    def _start_munge(self, munge_socket: Path) -> None:
        key = self.folder / "munge.key"
        if not key.is_file():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o600)
        munge_socket.unlink(missing_ok=True)
        self._start(
            "munged",
            [
                _binary("munged"),
                "--foreground",
                f"--socket={munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.folder / 'munged.pid'}",
                f"--seed-file={self.folder / 'munged.seed'}",
            ],
        )
        self._wait("munge socket", munge_socket.exists)

    def _start_database(self, port: int) -> None:
        data = self.folder / "mariadb"
        as_root = ["--user=root"] if os.geteuid() == 0 else []  # mariadbd refuses root unless told
        fresh = not (data / "mysql").is_dir()
        if fresh:
            self._run(
                [
                    _binary("mariadb-install-db"),
                    "--no-defaults",
                    f"--datadir={data}",
                    *as_root,
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                "mariadb-install-db",
            )
        db_socket = self.folder / "mariadb.socket"
        self._start(
            "mariadbd",
            [
                _binary("mariadbd"),
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={db_socket}",
                f"--port={port}",
                f"--bind-address={HOST}",
                f"--pid-file={self.folder / 'mariadb.pid'}",
                *as_root,
            ],
        )
        client = ["mariadb", "--no-defaults", f"--socket={db_socket}", "-u", "root"]
        self._wait("MariaDB", lambda: subprocess.run([*client, "-e", "select 1"], capture_output=True).returncode == 0)
        if fresh:
            grant = (
                f"CREATE USER '{DB_USER}'@'{HOST}' IDENTIFIED BY '{DB_PASSWORD}'; "
                f"GRANT ALL ON {DB_NAME}.* TO '{DB_USER}'@'{HOST}';"
            )
            self._run([*client, "-e", grant], "creating the accounting user")

    def _write_configs(self, munge_socket: Path, ports: dict[str, int]) -> None:
        f = self.folder
        dbd = f / "slurmdbd.conf"  # slurmdbd reads it beside SLURM_CONF; it must be private to SlurmUser
        dbd.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={munge_socket}",
                    "DbdHost=localhost",
                    f"DbdAddr={HOST}",
                    f"DbdPort={ports['dbd']}",
                    f"SlurmUser={self.user}",
                    f"PidFile={f / 'slurmdbd.pid'}",
                    "StorageType=accounting_storage/mysql",
                    f"StorageHost={HOST}",
                    f"StoragePort={ports['db']}",
                    f"StorageUser={DB_USER}",
                    f"StoragePass={DB_PASSWORD}",
                    f"StorageLoc={DB_NAME}",
                    "",
                ]
            )
        )
        dbd.chmod(0o600)
        cpus, memory = os.cpu_count() or 1, int(_memory_mb() * 0.9)
        self.conf.write_text(
            "\n".join(
                [
                    f"ClusterName={CLUSTER}",
                    f"SlurmctldHost={self.node}({HOST})",
                    f"SlurmctldPort={ports['ctld']}",
                    f"SlurmdPort={ports['d']}",
                    f"SlurmUser={self.user}",
                    f"SlurmdUser={self.user}",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={munge_socket}",
                    "AccountingStorageType=accounting_storage/slurmdbd",
                    f"AccountingStorageHost={HOST}",
                    f"AccountingStoragePort={ports['dbd']}",
                    f"AccountingStoragePass={munge_socket}",  # sacct and sacctmgr reach munge through this one
                    "JobAcctGatherType=jobacct_gather/none",
                    "JobCompType=jobcomp/none",
                    f"StateSaveLocation={f / 'state'}",
                    f"SlurmdSpoolDir={f / 'spool'}",
                    f"SlurmctldPidFile={f / 'slurmctld.pid'}",
                    f"SlurmdPidFile={f / 'slurmd.pid'}",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SwitchType=switch/none",
                    "MpiDefault=none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    f"DefMemPerCPU={memory // cpus}",  # without it a job takes the whole node's memory
                    "ReturnToService=2",
                    "KillWait=5",
                    "MinJobAge=300",
                    "SlurmdTimeout=60",
                    f"NodeName={self.node} NodeAddr={HOST} CPUs={cpus} RealMemory={memory} State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def jobs(self) -> list[str]:
        """The ids of the jobs (array tasks one by one) the controller still knows as pending or running."""
        return self._run(["squeue", "-h", "-r", "-o", "%i"], "squeue").split()

    def stop(self) -> None:
        """Cancel the jobs left (their processes are slurmd's), then stop the daemons, last started first."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            with contextlib.suppress(ConfigError, subprocess.SubprocessError):
                if self.jobs():
                    self._run(["scancel", "--full", "-u", self.user], "scancel")
                    self._wait("the cancelled jobs to end", lambda: not self.jobs(), timeout_s=30)
        for name in reversed(list(self.processes)):
            stop_daemon(self.processes.pop(name))


@contextlib.contextmanager
def local_slurm(folder: str | Path) -> Iterator[LocalSlurm]:
    cluster = LocalSlurm(folder)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m btxrd.runtime.slurm", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=".slurm", help="configuration, state, logs and the accounting database")
    args = parser.parse_args(argv)

    def serve() -> int:
        with local_slurm(args.dir) as cluster:
            print(
                f"Slurm {cluster._run(['sinfo', '-V'], 'sinfo').split()[-1]} running: partition {PARTITION}, "
                f"node {cluster.node} (logs in {cluster.folder})"
            )
            print(f"in another terminal:  export SLURM_CONF={cluster.conf}")
            print(
                "  python train.py -m hydra/launcher=slurm hydra.launcher.gpus_per_node=null "
                "hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=2 ...   (Ctrl-C here stops the cluster)"
            )
            sys.stdout.flush()
            wait_while(lambda: all(process.poll() is None for process in cluster.processes.values()))
            gone = [name for name, process in cluster.processes.items() if process.poll() is not None]
            print(f"{', '.join(gone)} exited: {log_tail(cluster.folder / f'{gone[0]}.log', 5)}", file=sys.stderr)
            return 1

    return serve_until_stopped(serve)


if __name__ == "__main__":
    sys.exit(main())
