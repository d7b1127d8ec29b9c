"""What every workflow script shares: its log file and the study it works on."""

from __future__ import annotations

import contextlib
import sys
import traceback
from pathlib import Path


@contextlib.contextmanager
def logged(snakemake):
    """Send stdout and stderr (progress bars included) of a job to its `log:` file."""
    log = Path(snakemake.log[0])
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", buffering=1) as handle:
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = handle
        try:
            yield
        except BaseException:
            traceback.print_exc()  # into the log, where Snakemake points the user
            raise
        finally:
            sys.stdout, sys.stderr = old


def study(wildcards) -> dict:
    return {"dataset": wildcards.dataset, "protocol": wildcards.protocol,
            "model": wildcards.model}
