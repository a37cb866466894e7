"""Kill a curation command (SIGKILL, its whole process group) once its table has committed some work units."""

import os
import signal
import subprocess
import time

from lumos.curation.unit_writer import read_progress


def kill_after_commits(cmd: list[str], table: str, units: int, timeout: float = 240) -> list[int]:
    """Run `cmd`; once the table at `table` records at least `units` committed work units, kill it. Returns the
    committed units' indices (as the table said just before the kill)."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, done = time.monotonic() + timeout, []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            progress = read_progress(table)
        except Exception:  # noqa: BLE001 - the table is being created
            progress = None
        done = [i for i in range(progress.units) if progress.is_done(i)] if progress else []
        if len(done) >= units:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the command finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # let orphaned workers notice their parent is gone
    return done
