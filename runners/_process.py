"""Who runs a trial: host, pid and process start time, and whether that process is still alive.

Status: stable. A trial records ``host``, ``pid`` and ``proc_start`` (the kernel's start time of the
process, from ``/proc/<pid>/stat``) when it starts. A later run on the same host decides honestly
whether a trial left RUNNING belongs to a dead process: the pid is gone, or it now belongs to a
different process (pids are reused; the start time tells them apart). Trials of other hosts are
never judged here (RDB heartbeats do that).
"""

from __future__ import annotations

import os
import socket

__all__ = ["identity", "process_alive", "HOST"]

HOST = socket.gethostname()


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    return stat.rsplit(")", 1)[1].split()  # fields 3.. of the file


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return None if fields is None else fields[19]  # field 22: starttime, in clock ticks since boot


def identity() -> dict[str, object]:
    """``{'host', 'pid', 'proc_start'}`` of the calling process."""
    pid = os.getpid()
    return {"host": HOST, "pid": pid, "proc_start": _start_time(pid)}


def process_alive(pid: int, proc_start: str | None) -> bool:
    """Is process ``pid`` (started at ``proc_start``, when known) still running on this host?"""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except (OverflowError, ValueError):
        return False
    if proc_start is None:
        return True
    fields = _stat(int(pid))
    if fields is None:  # no /proc (not Linux): the pid exists, assume it is ours
        return True
    if fields[0] in ("Z", "X"):  # zombie or dead: exited, not yet reaped
        return False
    return fields[19] == proc_start
