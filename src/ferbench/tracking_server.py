"""An MLflow tracking server for one workflow run whose jobs run on other machines.

Under a cluster executor (the SLURM profile) up to 100 jobs would write one SQLite file on a
shared file system, where SQLite's locking is unreliable. So when the jobs are not local and
no tracking URI is configured (`mlflow.tracking_uri`, MLFLOW_TRACKING_URI), the Snakefile's
`onstart` starts `mlflow server` on the submitting host over the same `<results>/mlflow.db`,
and every job reaches it through MLFLOW_TRACKING_URI (sbatch hands the submitting
environment to the job); `onsuccess`/`onerror` stop it by its PID. `mlflow.server: never`
keeps the SQLite store.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

#: The server this process started: (process, URI).
_running: list[tuple[subprocess.Popen, str]] = []
#: The server only stores runs. MLflow's job runner (for its GenAI jobs and periodic tasks:
#: a runner and seven huey consumers, eight more Python processes) would start with it unless
#: turned off.
SERVER_SETTINGS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def wanted(config: dict, local_jobs: bool) -> bool:
    """A server is started for remote jobs, unless a store is configured or it is refused."""
    settings = config["mlflow"]
    return not (local_jobs or settings["server"] == "never" or settings["tracking_uri"]
                or os.environ.get("MLFLOW_TRACKING_URI"))


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def launch(store: Path, artifacts: Path, host: str, port: int, log, timeout: float = 120,
           env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`mlflow server` over the SQLite file `store`, in its own process group, once it
    answers /health: (process, URI). Its output goes to the open file `log`; `env` is its
    environment (this process's by default), with SERVER_SETTINGS."""
    uri = f"http://{host}:{port}"
    mlflow = Path(sys.executable).parent / "mlflow"
    process = subprocess.Popen(
        [str(mlflow), "server", "--host", host, "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(artifacts)],
        stdout=log, stderr=subprocess.STDOUT, env={**(env or os.environ), **SERVER_SETTINGS},
        start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return process, uri
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            halt(process)
            raise RuntimeError(f"mlflow server on {uri} did not start: see {log.name}")
        time.sleep(0.5)


def start(config: dict) -> str:
    """Start the server over the results folder's store; export and return its URI."""
    settings, results = config["mlflow"], Path(config["results"]).resolve()
    host = settings["server_host"]
    results.mkdir(parents=True, exist_ok=True)
    log = open(results / "mlflow-server.log", "a")
    process, uri = launch(results / "mlflow.db", results / "mlartifacts", host,
                          settings["server_port"] or free_port(host), log)
    _running.append((process, uri))
    os.environ["MLFLOW_TRACKING_URI"] = uri
    print(f"MLflow tracking server for this run: {uri} (pid {process.pid})", flush=True)
    return uri


def stop() -> None:
    """Stop the server `start` started, if any (its whole process group, by PID)."""
    while _running:
        process, _ = _running.pop()
        halt(process)
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def halt(process: subprocess.Popen) -> None:
    """Stop a server's whole process group by its PID (SIGKILL if SIGTERM is not enough)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
