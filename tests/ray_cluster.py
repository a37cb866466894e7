"""A two-node Ray cluster on 127.0.0.1 for tests: `ray start --head` plus `ray start --address`, one CPU each,
each in its own process group so that exactly these nodes are stopped afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, temp_dir, env):
    """`ray start ... --block` in its own process group."""
    log = open(os.path.join(temp_dir, f"node-{len(os.listdir(temp_dir))}.log"), "w")
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats", *args],
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT, env=env)


def _alive_nodes(address: str, env: dict) -> int:
    code = ("import ray; ray.init(address='%s', logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


@contextmanager
def two_node_cluster(node_env: list[dict] | None = None):
    """Start the cluster; yields (address, env for a driver: this environment without RAY_ADDRESS). `node_env`:
    extra environment variables for the head and the second node (their workers inherit them)."""
    temp_dir = tempfile.mkdtemp(prefix="lr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    extra = node_env or [{}, {}]
    nodes = [_start(["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp_dir],
                    temp_dir, {**env, **extra[0]})]
    try:
        deadline = time.monotonic() + 120
        while _alive_nodes(address, env) < 1 and time.monotonic() < deadline:
            time.sleep(1)
        nodes.append(_start(["--address", address], temp_dir, {**env, **extra[1]}))
        while _alive_nodes(address, env) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert _alive_nodes(address, env) == 2, "the two-node cluster did not come up"
        yield address, env
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
