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
    except ChildProcessError:  # not our child: kill(0) succeeding is all we can know
        return True
    return done == 0
