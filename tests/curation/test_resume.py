"""A run killed (SIGKILL, whole process group) during download, then re-run, gives the same table as an
uninterrupted run: every image once, and the shards that had finished are not downloaded again."""

import os
import signal
import subprocess
import sys
import time

import lance
import pyarrow.parquet as pq
from web_cases import Case, write_metadata

from lumos.curation.download import DownloadConfig
from lumos.curation.sample import Route, encode, serve, synthetic_image
from lumos.curation.web_job import WebJob, run_web_job
from lumos.schemas import images as cols

CASES = [Case(f"img{i:02d}", 640, 512, 6.0, 0.1, 0.1, f"picture {i}", None) for i in range(40)]
SHARD = 4


def _cli(metadata, output):
    return [sys.executable, "-m", "lumos.curation.cli", "laion", "--input", metadata, "--output", output,
            "--workers", "1", "--threads", "2", "--shard-size", str(SHARD), "--allow-private-urls"]


def _table(path):
    ds = lance.dataset(path)
    rows = ds.to_table(columns=[cols.ID, cols.KEY, cols.SHA256, cols.WIDTH, cols.HEIGHT, cols.CAPTION])
    blobs = [b.read() for b in ds.take_blobs(cols.IMAGE, indices=list(range(ds.count_rows())))]
    return sorted(zip(*(rows[c].to_pylist() for c in rows.column_names), blobs))


def test_killed_download_resumes_without_duplicates_or_refetching(tmp_path, ray_session):
    routes = {f"/{c.name}": Route(encode(synthetic_image(640, 512, seed=i))) for i, c in enumerate(CASES)}
    with serve(routes, delay=0.15) as served:
        metadata = write_metadata(str(tmp_path / "meta.parquet"), "laion-upper", served.base_url, CASES)
        out = str(tmp_path / "killed")
        downloads = os.path.join(out, "_work", "download")
        proc = subprocess.Popen(_cli(metadata, out), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        done = []
        while time.monotonic() < deadline and proc.poll() is None:
            done = [n for n in os.listdir(downloads) if n.endswith("_stats.json")] if os.path.isdir(downloads) else []
            if len(done) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 2 <= len(done) < len(CASES) // SHARD
        assert not os.path.exists(os.path.join(out, "stats.json"))
        time.sleep(1)  # let orphaned workers notice their parent is gone

        finished = [os.path.join(downloads, n.replace("_stats.json", ".parquet"))
                    for n in os.listdir(downloads) if n.endswith("_stats.json")]
        finished_urls = [u for f in finished for u in pq.read_table(f, columns=["url"])["url"].to_pylist()]
        hits_before = dict(served.hits)

        resumed = subprocess.run(_cli(metadata, out), capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        for url in finished_urls:  # a finished shard is not fetched again
            path = url[len(served.base_url):]
            assert served.hits[path] == hits_before[path] == 1, path

        reference = WebJob(source="laion", input=metadata, output=str(tmp_path / "reference"),
                           download_config=DownloadConfig(workers=1, threads=2, shard_size=SHARD,
                                                          allow_private_urls=True))
        stats = run_web_job(reference, say=lambda *_: None)

    assert stats["kept"] == len(CASES)
    resumed_rows = _table(os.path.join(out, "images.lance"))
    assert len({r[0] for r in resumed_rows}) == len(resumed_rows) == len(CASES)
    assert resumed_rows == _table(str(tmp_path / "reference" / "images.lance"))


def test_killed_ingest_resumes_from_its_committed_shards(tmp_path, ray_session):
    """Shards are ingested and committed while the download goes on; a run killed after some commits and re-run
    reads none of the committed shards again (their files are made unreadable before the re-run) and gives
    the uninterrupted run's table, every id once, in one fragment per shard."""
    from kill_after import kill_after_commits

    routes = {f"/{c.name}": Route(encode(synthetic_image(640, 512, seed=i))) for i, c in enumerate(CASES)}
    with serve(routes, delay=0.15) as served:
        metadata = write_metadata(str(tmp_path / "meta.parquet"), "laion-upper", served.base_url, CASES)
        out = str(tmp_path / "killed")
        images = os.path.join(out, "images.lance")
        committed = kill_after_commits(_cli(metadata, out) + ["--commit-every", "0"], images, 2)
        assert 2 <= len(committed) < len(CASES) // SHARD
        assert not os.path.exists(os.path.join(out, "stats.json"))

        downloads = os.path.join(out, "_work", "download")
        for index in committed:  # read again, these would fail the job
            with open(os.path.join(downloads, f"{index:05d}.parquet"), "wb") as f:
                f.write(b"not a parquet file")
        resumed = subprocess.run(_cli(metadata, out), capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]

        reference = WebJob(source="laion", input=metadata, output=str(tmp_path / "reference"),
                           download_config=DownloadConfig(workers=1, threads=2, shard_size=SHARD,
                                                          allow_private_urls=True))
        stats = run_web_job(reference, say=lambda *_: None)

    resumed_rows = _table(images)
    assert len({r[0] for r in resumed_rows}) == len(resumed_rows) == stats["kept"] == len(CASES)
    assert resumed_rows == _table(str(tmp_path / "reference" / "images.lance"))
    ds = lance.dataset(images)
    assert sorted(f.count_rows() for f in ds.get_fragments()) == [SHARD] * (len(CASES) // SHARD)
    assert len(ds.versions()) == 1  # the versions the commits made are cleaned at the end
