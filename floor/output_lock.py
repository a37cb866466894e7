"""One writer per output folder: every command that writes a folder holds OUTPUT/.lumos.lock for its whole run.

The lock is a small JSON file (pid, host, process start time, command, a random token) created with
O_CREAT|O_EXCL, which is atomic on local filesystems and on the shared ones clusters use (NFSv3+, Lustre,
GPFS, CephFS): of two processes, on one machine or two, exactly one creates it. A second process fails at
once with one line naming the holder. A lock whose holder is gone (a process on this host that no longer
runs, or whose pid now belongs to another process) is taken over; a lock held from another host is never
taken over automatically, since its processes cannot be seen from here: the message says which file to
remove once that run is known to be dead.

Object-store outputs (s3://, gs://, ...) are not locked: pyarrow's filesystem layer has no create-if-absent.

Like the rest of the shared floor (errors, Ray start-up), this module depends on nothing else in lumos.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid

from lumos.floor.errors import UserError

LOCK_NAME = ".lumos.lock"
UNREADABLE_GRACE_S = 10.0  # a lock file still empty after this long was left by a process killed mid-create


class OutputLocked(UserError):
    """Another process writes this output."""


def is_object_store(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False  # killed, not yet reaped by its parent
    except (OSError, IndexError):
        pass
    return start_ticks is None or _start_ticks(pid) in (None, start_ticks)


class OutputLock:
    """The lock on one folder; `acquire()` raises OutputLocked when another process holds it."""

    def __init__(self, folder: str, command: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid()),
                       "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "token": uuid.uuid4().hex}
        self.created_folder = False
        self.held = False

    def acquire(self) -> None:
        if not os.path.isdir(self.folder):
            if os.path.exists(self.folder):
                raise UserError(f"output {self.folder} exists and is not a folder")
            os.makedirs(self.folder, exist_ok=True)
            self.created_folder = True
        for _ in range(10):  # a few rounds: another process may take over or release between our looks
            if self._create():
                self.held = True
                return
            holder = self._read()
            if holder is None:
                if not self._stale_unreadable():
                    continue
            elif not self._stale(holder):
                raise OutputLocked(self._message(holder))
            if self._take_over(holder):
                self.held = True
                return
        raise OutputLocked(f"output {self.folder} is locked ({self.path}) and the lock keeps changing; try again")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        holder = self._read()
        if holder is not None and holder.get("token") == self.record["token"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self.created_folder:
            with contextlib.suppress(OSError):
                os.rmdir(self.folder)  # only if the run wrote nothing (a user error before any work)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.record, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> dict | None:
        try:
            with open(self.path) as f:
                holder = json.load(f)
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") != self.record["host"]:
            return False  # another machine's process: we cannot see whether it runs
        pid = holder.get("pid")
        return not isinstance(pid, int) or not _alive(pid, holder.get("start_ticks"))

    def _stale_unreadable(self) -> bool:
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return False  # released meanwhile: try to create it again
        if age < UNREADABLE_GRACE_S:
            time.sleep(0.2)  # its writer may be between create and write
            return False
        return True

    def _take_over(self, holder: dict | None) -> bool:
        """Replace a stale lock with ours, unless another process changed it first (checked under a flock,
        which serialises the processes of this host: only they ever take over a lock)."""
        import fcntl

        with open(os.path.join(self.folder, LOCK_NAME + ".takeover"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if self._read() != holder:
                return False
            tmp = f"{self.path}.{self.record['token']}"
            with open(tmp, "w") as f:
                json.dump(self.record, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            return True

    def _message(self, holder: dict) -> str:
        return (f"output {self.folder} is in use by another process: {holder.get('command', '?')} "
                f"(pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}); wait for it to "
                f"finish or choose another --output (if that process is gone, remove {self.path})")


@contextlib.contextmanager
def output_lock(folder: str, command: str):
    """Hold the lock on `folder` (created if missing) for the body; object-store folders are not locked."""
    if is_object_store(folder):
        yield None
        return
    lock = OutputLock(os.path.abspath(folder.removeprefix("file://")), command)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
