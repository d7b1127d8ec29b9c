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


def wanted(config: dict, local_jobs: bool) -> bool:
    """A server is started for remote jobs, unless a store is configured or it is refused."""
    settings = config["mlflow"]
    return not (local_jobs or settings["server"] == "never" or settings["tracking_uri"]
                or os.environ.get("MLFLOW_TRACKING_URI"))


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start(config: dict, timeout: float = 120) -> str:
    """Start the server over the results folder's store; export and return its URI."""
    settings, results = config["mlflow"], Path(config["results"]).resolve()
    host = settings["server_host"]
    port = settings["server_port"] or free_port(host)
    uri = f"http://{host}:{port}"
    results.mkdir(parents=True, exist_ok=True)
    log = open(results / "mlflow-server.log", "a")
    mlflow = Path(sys.executable).parent / "mlflow"
    process = subprocess.Popen(
        [str(mlflow), "server", "--host", host, "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{results / 'mlflow.db'}",
         "--artifacts-destination", str(results / "mlartifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(f"mlflow server on {uri} did not start: see "
                               f"{results / 'mlflow-server.log'}")
        time.sleep(0.5)
    _running.append((process, uri))
    os.environ["MLFLOW_TRACKING_URI"] = uri
    print(f"MLflow tracking server for this run: {uri} (pid {process.pid})", flush=True)
    return uri


def stop() -> None:
    """Stop the server `start` started, if any (its whole process group, by PID)."""
    while _running:
        process, _ = _running.pop()
        _stop(process)
        os.environ.pop("MLFLOW_TRACKING_URI", None)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
