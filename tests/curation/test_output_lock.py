"""The output lock (floor/output_lock.py) with real processes: who may take it, who may take it over, and
what it leaves behind."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lumos.curation.job_dir import JobDir
from lumos.floor.errors import UserError
from lumos.floor.output_lock import LOCK_NAME, UNREADABLE_GRACE_S, OutputLock, OutputLocked, output_lock

HOLD = ("import sys, time\n"
        "from lumos.floor.output_lock import OutputLock\n"
        "OutputLock(sys.argv[1], 'lumos-curate laion').acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")


def _holder(folder):
    """A process that takes the lock on `folder` and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _read(folder):
    with open(os.path.join(folder, LOCK_NAME)) as f:
        return json.load(f)


def test_a_live_holder_keeps_the_lock_and_a_killed_one_loses_it(tmp_path):
    out = tmp_path / "out"
    proc = _holder(out)
    try:
        with pytest.raises(OutputLocked) as err:
            OutputLock(str(out), "lumos-curate coyo").acquire()
        message = str(err.value)
        assert "\n" not in message
        assert f"pid {proc.pid} on {socket.gethostname()}" in message and "lumos-curate laion" in message
        assert _read(out)["pid"] == proc.pid  # the holder's lock is untouched
    finally:
        proc.kill()
        proc.wait()  # killed and reaped: its pid is gone
    with output_lock(str(out), "lumos-curate coyo") as lock:
        assert _read(out) == lock.record and lock.record["pid"] == os.getpid()
    assert not os.path.exists(out / LOCK_NAME)  # released: the file is gone
    assert os.path.exists(out / (LOCK_NAME + ".takeover"))  # it was taken over, not found free


def test_a_killed_but_unreaped_holder_is_taken_over(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a zombie: the pid still exists until its parent waits for it
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    try:
        with output_lock(str(tmp_path), "lumos-encode"):
            assert _read(tmp_path)["pid"] == os.getpid()
    finally:
        proc.wait()


def test_a_reused_pid_is_not_the_holder(tmp_path):
    """The holder's pid now belongs to another process (its start time differs): the lock is stale."""
    stale = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": 1, "command": "lumos-encode"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(stale))
    with output_lock(str(tmp_path), "lumos-encode") as lock:
        assert _read(tmp_path)["token"] == lock.record["token"]


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    other = {"pid": 1, "host": "gpu-node-7", "start_ticks": 5, "command": "lumos-encode", "since": "then"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(OutputLocked) as err:
        with output_lock(str(tmp_path), "lumos-encode"):
            pass
    message = str(err.value)
    assert "pid 1 on gpu-node-7" in message and str(tmp_path / LOCK_NAME) in message and "\n" not in message
    assert _read(tmp_path) == other


def test_an_empty_lock_file_is_taken_over_only_after_the_grace_period(tmp_path):
    lock_file = tmp_path / LOCK_NAME
    lock_file.write_text("")  # a process killed between creating the file and writing it
    with pytest.raises(OutputLocked, match="keeps changing"):  # young: its writer may still be writing
        OutputLock(str(tmp_path), "lumos-encode").acquire()
    old = time.time() - UNREADABLE_GRACE_S - 5
    os.utime(lock_file, (old, old))
    with output_lock(str(tmp_path), "lumos-encode") as lock:
        assert _read(tmp_path)["token"] == lock.record["token"]
    assert not lock_file.exists()


def test_a_folder_made_by_the_lock_is_removed_only_when_nothing_was_written(tmp_path):
    with pytest.raises(UserError):
        with output_lock(str(tmp_path / "new"), "lumos-curate laion"):
            raise UserError("a bad option, found before any work")
    assert not os.path.exists(tmp_path / "new")
    with output_lock(str(tmp_path / "used"), "lumos-curate laion"):
        (tmp_path / "used" / "stats.json").write_text("{}")
    assert os.listdir(tmp_path / "used") == ["stats.json"]
    (tmp_path / "mine").mkdir()
    with output_lock(str(tmp_path / "mine"), "lumos-curate laion"):
        pass
    assert os.path.isdir(tmp_path / "mine")  # the user's folder stays, even empty
    with output_lock("s3://bucket/out", "lumos-encode") as lock:  # object stores: no lock, nothing written
        assert lock is None


def test_a_job_folder_holding_only_its_lock_is_not_someone_elses(tmp_path):
    with output_lock(str(tmp_path / "out"), "lumos-curate laion"):
        assert JobDir(str(tmp_path / "out")).finished({"source": "laion"}) is False
        (tmp_path / "out" / "notes.txt").write_text("x")
        with pytest.raises(UserError, match="holds no lumos-curate job"):
            JobDir(str(tmp_path / "out")).finished({"source": "laion"})


def test_export_and_the_fid_cache_write_under_the_lock(tmp_path, monkeypatch, capsys):
    import numpy as np

    from lumos.generation import fid
    from lumos.generation.export import export

    busy = tmp_path / "busy"
    proc = _holder(busy)
    try:
        with pytest.raises(OutputLocked, match=f"pid {proc.pid} on "):  # before the checkpoint is even read
            export("no-such-run", str(busy))
        monkeypatch.setattr(fid, "CACHE_WAIT_S", 0.3)
        fid.store_statistics(str(busy), str(busy / "stats-a.npz"), np.zeros(2), np.eye(2), {"k": 1})
        assert "reference statistics not cached" in capsys.readouterr().err  # the result does not need it
        assert sorted(os.listdir(busy)) == [LOCK_NAME]
    finally:
        proc.kill()
        proc.wait()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "stats-b.tmp.npz").write_bytes(b"half")  # a killed writer's
    fid.store_statistics(str(cache), str(cache / "stats-a.npz"), np.zeros(2), np.eye(2), {"k": 1})
    assert sorted(os.listdir(cache)) == ["stats-a.npz"]
    with np.load(cache / "stats-a.npz") as saved:
        assert saved["sigma"].tolist() == [[1, 0], [0, 1]]
