"""One writer per run folder: a second `lumos-train` on a running run's --output fails at once in one line naming
the holder, and the first finishes with each step logged once; under torchrun, a refused run ends in one line
on every rank instead of hanging. (A lock left by a SIGKILLed run is taken over: test_train.py's SIGKILL test.)"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from lumos.floor.output_lock import LOCK_NAME, output_lock
from lumos.trainer import checkpoint as ckpt

FLAGS = ["--model", "DiT-T/2", "--latents", "tiny-vae", "--condition", "tiny-dino", "--precision", "fp32",
         "--batch-size", "8", "--lr", "1e-3", "--warmup", "4", "--workers", "0", "--log-every", "1",
         "--save-every", "10", "--steps", "20"]
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def _train(data, output):
    return [sys.executable, "-m", "lumos.generation.train_cli", "i2i", "--data", data, "--output", str(output), *FLAGS]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _holder(folder) -> dict | None:
    try:
        return json.loads((folder / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None  # not there yet, or created and not yet written


def test_second_lumos_train_on_one_output_is_refused_and_the_first_finishes(feature_table, tmp_path):
    run = tmp_path / "run"
    with open(tmp_path / "first.err", "w") as err:
        first = subprocess.Popen(_train(feature_table, run), stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 300
        while _holder(run) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        # Held still while the second starts: the first cannot have finished (nor released) in between.
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None and _holder(run)["pid"] == first.pid, (tmp_path / "first.err").read_text()[-3000:]
        second = subprocess.run(_train(feature_table, run), capture_output=True, text=True, timeout=300)
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert second.returncode == 2 and len(lines) == 1, lines
        assert f"(pid {first.pid} on {socket.gethostname()}, since " in lines[0] and "lumos-train" in lines[0], lines
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, (tmp_path / "first.err").read_text()[-3000:]
    with open(run / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 21))  # each step once
    assert [s for s, _ in ckpt.list_checkpoints(str(run))] == [10, 20]
    assert all(ckpt.damage(path) is None for _, path in ckpt.list_checkpoints(str(run)))
    assert not (run / LOCK_NAME).exists()  # released


def test_refused_torchrun_ends_in_one_line_on_every_rank(tmp_path):
    run = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with output_lock(str(run), "a test holding the run"):
        result = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port",
                                 str(port), "-m", "lumos.generation.train_cli", "i2i", "--data", str(tmp_path / "none.lance"),
                                 "--output", str(run), *FLAGS], capture_output=True, text=True, timeout=300)
        assert sorted(os.listdir(run)) == [LOCK_NAME]  # nothing written by either rank
    errors = _errors(result.stderr)
    assert result.returncode != 0 and len(errors) == 2, result.stderr[-4000:]  # one line from each rank
    assert all(f"a test holding the run (pid {os.getpid()} on {socket.gethostname()}" in line for line in errors)
