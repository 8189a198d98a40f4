"""Keeps a server from outliving the process that started it.

Run as a script (`python watchdog.py --grace S -- COMMAND...`, standard library only, nothing of the package
imported), started in a session of its own: it runs COMMAND in its own process group and stops that whole
group (the server and every process the server started, e.g. vLLM's engine core and workers, which a
`kill -9` of the server alone leaves running with their GPU memory) when

- its lifeline ends: stdin is a pipe whose other end only the starting process holds, so it reads
  end-of-file when that process closes it (a normal stop) or dies for any reason, `kill -9` included;
- its parent changes (the same death, seen another way);
- it gets SIGTERM, SIGINT or SIGHUP;
- COMMAND exits on its own (what it left behind in the group goes too).

Stopping is SIGTERM to the group, then SIGKILL to whatever is left after `--grace` seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time


def _group_members(group: int) -> list[int]:
    """Live processes of a process group (Linux /proc), this one excluded."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:  # state, ppid, pgrp
            members.append(int(entry))
    return members


def _stop_group(grace: float) -> None:
    group = os.getpgrp()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is for the others
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while _group_members(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _group_members(group):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue


def main(argv: list[str]) -> int:
    grace = 20.0
    if argv[:1] == ["--grace"]:
        grace, argv = float(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: watchdog.py [--grace SECONDS] -- COMMAND...", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()

    def lifeline() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stop.set()

    threading.Thread(target=lifeline, daemon=True).start()
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    code = None
    while not stop.is_set() and os.getppid() == parent:
        code = server.poll()
        if code is not None:
            break
        stop.wait(0.5)
    _stop_group(grace)
    code = server.wait() if code is None else code
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
