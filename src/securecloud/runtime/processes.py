"""Whether a process still runs, for ledgers and supervisors that outlive their children."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie child of ours (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: a zombie left to a pid 1 that never reaps
        return not _zombie(pid)
    return done == 0


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False
