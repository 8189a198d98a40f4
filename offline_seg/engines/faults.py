"""Fault points for the fault-matrix tests: `OFFLINE_SEG_FAULT=after:detect:2` kills the process with
SIGKILL right after the 2nd `detect` result of this process was stored, the way a crash, the OOM killer
or `kill -9` would. Several points: comma-separated. Unset (always, outside tests): does nothing."""

from __future__ import annotations

import os
import signal

ENV = "OFFLINE_SEG_FAULT"


def fault_point(when: str, stage: str, count: int) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    for point in spec.split(","):
        parts = point.strip().split(":")
        if len(parts) == 3 and parts[0] == when and parts[1] == stage and parts[2] == str(count):
            os.kill(os.getpid(), signal.SIGKILL)
