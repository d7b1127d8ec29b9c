"""The tiny study on a real single-node SLURM cluster started here, through `profiles/slurm`.

Debian's slurm-wlm + munge are installed when missing (root only), the daemons are started by
hand on 127.0.0.1 (no systemd) and stopped by their PIDs. The pitfalls this works around are
listed in STACK.md: the config must be /etc/slurm/slurm.conf (the job step strips SLURM_CONF),
no accounting (so `--slurm-status-command squeue` with a long MinJobAge), no cgroups.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY_FOLDS, tiny_config
from tests.workflow_helpers import (apt_install_or_skip, assert_study_finished, env,
                                    mlflow_runs, run_snakemake, write_config)

pytestmark = pytest.mark.slow(minutes=6)

PACKAGES = ("slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge")
TOOLS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sinfo", "scontrol")
CONF_DIR = Path("/etc/slurm")
MARKER = "# Written by ferbench tests/test_slurm.py for a throwaway test cluster."
PARTITION = "ferbench"
FAKE_GPUS = 2


def tool(name: str) -> str | None:
    """Where a SLURM/munge program is, the daemons' sbin folders included."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin:/sbin")


def ensure_slurm_installed() -> None:
    """Install SLURM and munge with apt where missing; skip, saying why, where impossible."""
    apt_install_or_skip("SLURM", PACKAGES, lambda: all(tool(name) for name in TOOLS))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mb() -> int:
    """Physical memory in MB, less a margin (slurmd drains a node that declares more)."""
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return int(total_kb / 1024 * 0.9)


def slurm_conf(state: Path, munge_socket: Path) -> str:
    """One node (this machine, on 127.0.0.1) with all its cores, its memory and fake GPUs.

    The GPUs are fake device files (see `fake_gpus`): profiles/slurm asks for `gres=gpu:1`
    for training as on a real cluster; the job then trains on the CPU.
    """
    return f"""{MARKER}
ClusterName=ferbench
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MinJobAge=600
MailProg=/bin/true
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={memory_mb()} Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def fake_gpus(state: Path) -> str:
    """gres.conf for FAKE_GPUS GPUs whose device files are copies of /dev/null's node.

    slurmd drops a GPU without a device file, but only stats the file (no cgroups here)."""
    for index in range(FAKE_GPUS):
        os.mknod(state / f"fake-gpu{index}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return (f"{MARKER}\nNodeName=localhost Name=gpu "
            f"File={state}/fake-gpu[0-{FAKE_GPUS - 1}]\n")


def start(cmd: list[str], log: Path, request, **popen) -> subprocess.Popen:
    """Start a daemon in the foreground; a finaliser stops it by its PID whatever happens."""
    handle = open(log, "ab")
    process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, **popen)

    def stop():
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=20)
        handle.close()

    request.addfinalizer(stop)
    return process


def wait_for_idle_node(processes: list[subprocess.Popen], state: Path, timeout: float = 90):
    """Block until the node reports idle; fail with the daemons' logs if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p.args[0] for p in processes if p.poll() is not None]
        if dead:
            break
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                timeout=30).stdout.split()
        if "idle" in states:
            return
        time.sleep(1)
    logs = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}"
                     for log in sorted(state.glob("*.log")))
    pytest.fail(f"the SLURM node never became idle (exited: {dead}):\n{logs}")


@pytest.fixture(scope="module")
def slurm_cluster(request):
    """munged, slurmctld and slurmd for this module; the config removed again afterwards."""
    ensure_slurm_installed()
    if os.geteuid() != 0:
        pytest.skip("starting slurmd and munged needs root")
    conf, gres = CONF_DIR / "slurm.conf", CONF_DIR / "gres.conf"
    for path in (conf, gres):
        if path.exists() and MARKER not in path.read_text():
            pytest.skip(f"{path} belongs to a real SLURM installation; not overwriting it")
    state = Path(tempfile.mkdtemp(prefix="ferbench-slurm-"))
    state.chmod(0o755)  # munged (user munge) must reach its socket folder inside
    request.addfinalizer(lambda: shutil.rmtree(state, ignore_errors=True))
    for folder in ("ctld", "spool"):
        (state / folder).mkdir()
    munge_dir = state / "munge"
    munge_dir.mkdir(mode=0o755)
    shutil.chown(munge_dir, "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o600)
    munge_socket = munge_dir / "munge.socket"

    CONF_DIR.mkdir(parents=True, exist_ok=True)
    conf.write_text(slurm_conf(state, munge_socket))
    gres.write_text(fake_gpus(state))
    request.addfinalizer(lambda: [p.unlink(missing_ok=True) for p in (conf, gres)])

    munged = start([tool("munged"), "--foreground", f"--socket={munge_socket}",
                    f"--pid-file={munge_dir / 'munged.pid'}", f"--seed-file={munge_dir / 'seed'}",
                    f"--log-file={munge_dir / 'munged.log'}", f"--key-file={key}"],
                   state / "munged.out", request, user="munge", group="munge", extra_groups=[])
    deadline = time.monotonic() + 30
    while not munge_socket.exists() and munged.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert munge_socket.exists(), (munge_dir / "munged.log").read_text()
    slurmctld = start([tool("slurmctld"), "-D", "-i"], state / "slurmctld.out", request)
    slurmd = start([tool("slurmd"), "-D", "-N", "localhost"], state / "slurmd.out", request)
    wait_for_idle_node([munged, slurmctld, slurmd], state)
    return state


def cluster_profile(folder: Path) -> Path:
    """profiles/slurm with its placeholders filled in for this cluster, nothing else changed:
    our partition, and no account (without slurmdbd the plugin cannot validate one)."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    defaults = profile["default-resources"]
    assert {defaults["slurm_partition"], defaults["slurm_account"]} == {"<partition>",
                                                                        "<account>"}
    defaults["slurm_partition"] = PARTITION
    del defaults["slurm_account"]
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def finished_jobs() -> list[dict]:
    """Every job slurmctld still remembers (MinJobAge), as scontrol's key=value fields."""
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True,
                         env=env(), timeout=60, check=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line]


def megabytes(text: str) -> float:
    """scontrol's memory figures (`4001M`, `16G`) in MB."""
    return float(text[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[text[-1]]


def test_tiny_study_through_the_slurm_profile(slurm_cluster, tmp_path):
    started = time.perf_counter()
    write_config(tmp_path, tiny_config(Path("results")))
    profile = cluster_profile(tmp_path / "profile")
    # Status checks every 2 s, not the profile's 10: on this one-node cluster a finished job
    # otherwise waits up to 10 s to be seen, and the tiny study is a chain of short jobs.
    run_snakemake(tmp_path, "--profile", str(profile), "--slurm-status-command", "squeue",
                  "--slurm-init-seconds-before-status-checks", "2",
                  "--seconds-between-status-checks", "2", timeout=1500)
    print(f"\nSLURM run of the tiny study: {time.perf_counter() - started:.0f} s")

    assert_study_finished(tmp_path / "results")
    # The jobs logged to the tracking server the run started, over the results folder's
    # store, and the server is gone with the run.
    for run in (tmp_path / "results").rglob("run.json"):
        uri = json.loads(run.read_text())["tracking_uri"]
        assert uri.startswith("http://127.0.0.1:"), uri
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{uri}/health", timeout=2)
    parents, folds = mlflow_runs(tmp_path / "results")
    assert len(parents) == 1 and len(folds) == TINY_FOLDS
    jobs = finished_jobs()
    rules = [re.search(r"rule_(\w+?)(_wildcards|$)", job.get("Comment", "")) for job in jobs]
    trained = [job for job, rule in zip(jobs, rules) if rule and rule.group(1) == "train"]
    assert len(trained) == TINY_FOLDS, [job.get("Comment") for job in jobs]
    # The download and the aggregations ran on the submitting host (the Snakefile's
    # localrules), and their outputs are there all the same (assert_study_finished).
    queued = {rule.group(1) for rule in rules if rule}
    assert queued and not queued & {"fetch", "summarize", "compare", "report"}, queued
    assert all(job["JobState"] == "COMPLETED" for job in jobs), [
        (job.get("Comment"), job["JobState"]) for job in jobs]
    for job in trained:  # the profile's training request reached SLURM
        assert "gpu:1" in job.get("TresPerNode", ""), job
        assert megabytes(job["MinMemoryNode"]) >= 4000, job
        assert job["Partition"] == PARTITION
