"""`lumos-curate laion` with RAY_ADDRESS set runs its download through img2dataset's Ray distributor across a
two-node cluster on 127.0.0.1 (images served from 127.0.0.1), and gives the same table as a one-machine run.
Which process fetched each URL is logged by a sitecustomize hook on urllib's urlopen: every fetch must come
from a Ray worker of one of the two nodes (they carry LUMOS_NODE), none from the driver's own processes."""

import os
import subprocess
import sys

import lance
from ray_cluster import two_node_cluster
from test_web_job import _run
from web_cases import CASES

from lumos.schemas import images as cols

HOOK = '''
import os
import urllib.request

_urlopen = urllib.request.urlopen


def _logged(*args, **kwargs):
    fd = os.open(os.environ["FETCH_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (os.environ.get("LUMOS_NODE", "driver") + "\\n").encode())
    os.close(fd)
    return _urlopen(*args, **kwargs)


urllib.request.urlopen = _logged
'''

RUN = '''
import sys
sys.path[:0] = [{tests!r}]
from test_web_job import _run
import pathlib
_run(pathlib.Path({root!r}), "laion-upper", {base_url!r})
'''


def _table(path):
    ds = lance.dataset(path)
    rows = ds.to_table(columns=[cols.ID, cols.KEY, cols.SHA256, cols.WIDTH, cols.HEIGHT]).sort_by(cols.ID)
    return rows.to_pylist()


def test_download_on_a_two_node_cluster_gives_the_same_table(tmp_path, ray_session, served):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "fetches.log"
    common = {"PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "FETCH_LOG": str(log)}
    cluster_root = tmp_path / "cluster"
    cluster_root.mkdir()
    with two_node_cluster([{**common, "LUMOS_NODE": "head"}, {**common, "LUMOS_NODE": "second"}]) as (address, env):
        code = RUN.format(tests=os.path.dirname(__file__), root=str(cluster_root), base_url=served.base_url)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=500,
                             env={**env, **common, "RAY_ADDRESS": address})
        assert run.returncode == 0, run.stderr[-3000:]

    fetched = log.read_text().split()
    assert fetched and set(fetched) <= {"head", "second"}  # every fetch in a Ray worker of the cluster
    assert len(fetched) >= sum(1 for c in CASES if c.expect is None)

    local_root = tmp_path / "local"
    local_root.mkdir()
    _run(local_root, "laion-upper", served.base_url)
    got, want = _table(str(cluster_root / "out" / "images.lance")), _table(str(local_root / "out" / "images.lance"))
    assert got == want and len(got) == sum(1 for c in CASES if c.expect is None)
