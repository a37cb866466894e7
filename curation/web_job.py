"""`lumos-curate laion|coyo`: filter → download → ingest, resumable, with every dropped row counted.

Besides the layout of job_dir.py, DIR/kept/*.parquet holds the filtered metadata (the download list) and
DIR/_work/download img2dataset's shards. A re-run with the same arguments resumes where the last run stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow.parquet as pq

from lumos.curation.download import DownloadConfig, download, finished_shards, shard_index
from lumos.curation.ingest import IngestConfig, ingest_shard
from lumos.curation.inputs import check_web_columns, read_schemas, resolve_parquet_files
from lumos.curation.job_dir import JobDir, stage_stats
from lumos.curation.unit_writer import COMMIT_EVERY_S, SinkResult, UnitTable, run_unit_tasks
from lumos.curation.web_filter import FilterResult, WebFilterConfig, run_filter
from lumos.floor.errors import UserError
from lumos.floor.fs import write_json
from lumos.floor.output_lock import output_lock
from lumos.floor.ray_runtime import cluster_cpus, init_ray, on_cluster
from lumos.schemas import web

POLL_S = 1.0  # how often the download folder is listed for newly finished shards
DEFAULT_MAX_SCORE = 0.5  # watermark / unsafe probability bound applied when the metadata has the column


@dataclass
class WebJob:
    source: str
    input: str
    output: str
    min_size: int = 512
    min_aesthetic: float = 5.0  # 0 turns the aesthetic filter off
    max_watermark: float | None = None  # None: DEFAULT_MAX_SCORE where the column exists
    max_unsafe: float | None = None
    download: bool = True
    download_config: DownloadConfig = field(default_factory=DownloadConfig)
    commit_every: float = COMMIT_EVERY_S  # seconds between commits of ingested shards (not part of the record)


class WebJobDir(JobDir):
    def __post_init__(self):
        super().__post_init__()
        self.filter_done = os.path.join(self.work, "filter.json")
        self.downloads = os.path.join(self.work, "download")
        self.kept = os.path.join(self.root, "kept")


def plan(job: WebJob) -> tuple[list[str], web.ColumnMap, WebFilterConfig, dict]:
    """Check the inputs and arguments; return the files, their column map, filter config and job record."""
    files = resolve_parquet_files(job.input)
    schema, _ = read_schemas(files)
    try:
        columns = web.detect(job.source, schema.names)
    except web.MissingColumn as err:
        raise UserError(str(err)) from None
    check_web_columns(files, columns)  # types each file gives the filter's columns: before anything is written
    min_aesthetic = job.min_aesthetic if job.min_aesthetic > 0 else None
    if min_aesthetic is not None and not columns.has(web.AESTHETIC):
        raise UserError(
            f"--min-aesthetic {job.min_aesthetic}: {job.input} has no aesthetic score column; score it first "
            f"(lumos-curate score) or pass --min-aesthetic 0"
        )
    config = WebFilterConfig(
        source=job.source,
        min_size=job.min_size,
        min_aesthetic=min_aesthetic,
        max_watermark=_score_bound("--max-watermark", job.max_watermark, columns.has(web.WATERMARK), job.input),
        max_unsafe=_score_bound("--max-unsafe", job.max_unsafe, columns.has(web.UNSAFE), job.input),
    )
    record = {
        "source": job.source,
        "inputs": files,
        "columns": columns.physical,
        "filters": asdict(config),
        "download": job.download,
        "image_size": job.download_config.image_size if job.download else None,
        # part of the record: a resumed run cannot switch the URL guard off (or on) half way
        "allow_private_urls": job.download_config.allow_private_urls if job.download else None,
    }
    return files, columns, config, record


def _score_bound(flag: str, value: float | None, has_column: bool, input_path: str) -> float | None:
    if value is None:
        return DEFAULT_MAX_SCORE if has_column else None
    if not has_column:
        raise UserError(f"{flag} {value}: {input_path} has no such score column")
    return value


def run_web_job(job: WebJob, say=print) -> dict:
    """Run (or resume) the job; returns the stats written to DIR/stats.json."""
    started = time.monotonic()
    files, columns, config, record = plan(job)
    with output_lock(job.output, f"lumos-curate {job.source}"):  # one writer, from the first write to the last
        return _run_locked(job, files, columns, config, record, started, say)


def _run_locked(job: WebJob, files, columns, config, record, started: float, say) -> dict:
    paths = WebJobDir(job.output)
    if paths.finished(record):
        say(f"{paths.root} already holds this finished job: nothing to do")
        return paths.read_stats()
    paths.start(record)
    init_ray()
    timings = {}

    t0 = time.monotonic()
    filtered = _filter_once(files, columns, config, paths)
    timings["filter_s"] = round(time.monotonic() - t0, 3)
    say(f"filter: {filtered.rows} rows, kept {filtered.kept} ({columns.variant} {job.source} columns)")
    stages = {"filter": stage_stats(filtered.rows, filtered.kept, filtered.dropped)}
    dropped = Counter(filtered.dropped)
    kept = filtered.kept

    if job.download:
        t0 = time.monotonic()
        ingested = _download_and_ingest(paths, filtered.kept, job.download_config,
                                        IngestConfig(job.source, config.min_size), paths.schema(record),
                                        job.commit_every)
        timings["download_ingest_s"] = round(time.monotonic() - t0, 3)
        lost = filtered.kept - ingested.rows
        if lost:  # img2dataset writes a row for every URL it tried: a gap means rows it never tried
            ingested.dropped["missing_from_download"] += lost
        stages["download"] = stage_stats(filtered.kept, ingested.kept, ingested.dropped)
        dropped.update(ingested.dropped)
        kept = ingested.kept

    timings["total_s"] = round(time.monotonic() - started, 3)
    stats = {"rows": filtered.rows, "kept": kept, "dropped": dict(sorted(dropped.items())),
             "stages": stages, "timings": timings}
    assert stats["rows"] == kept + sum(dropped.values()), stats
    write_json(paths.stats, stats)
    return stats


def _filter_once(files, columns, config, paths: WebJobDir) -> FilterResult:
    """The filter runs once per job: a finished result is reused by every re-run."""
    if os.path.exists(paths.filter_done):
        with open(paths.filter_done) as f:
            done = json.load(f)
        return FilterResult(done["rows"], done["kept"], Counter(done["dropped"]))
    tmp = paths.kept + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    result = run_filter(files, columns, config, paths.work, tmp)
    shutil.rmtree(paths.kept, ignore_errors=True)
    os.replace(tmp, paths.kept)
    write_json(paths.filter_done, {"rows": result.rows, "kept": result.kept, "dropped": result.dropped})
    return result


def _download_and_ingest(paths: WebJobDir, expected_rows: int, config: DownloadConfig, ingest: IngestConfig,
                         schema, commit_every: float) -> SinkResult:
    """img2dataset downloads while a thread ingests each shard it finishes in a Ray task (one fragment a
    shard), committed with the job's progress: a re-run skips the committed shards, and img2dataset's own
    resume skips the shards it finished."""
    import ray
    from tqdm import tqdm

    expected = expected_shards(paths.kept, config.shard_size) if expected_rows else 0
    table = UnitTable(paths.images, schema, [f"shard-{i}" for i in range(expected)], commit_every)
    pending = set(table.pending())
    if not pending:
        return table.finish()
    _clear_download_leftovers(paths.downloads)
    downloaded, failure = threading.Event(), []
    task = ray.remote(ingest_shard)
    files: dict[int, str] = {}  # shard → its file, for the shards in flight

    console = sys.stderr  # taken now: the download redirects img2dataset's console output to a log

    def ingest_all() -> None:
        try:
            with tqdm(total=len(pending), unit="shard", desc="download+ingest", dynamic_ncols=True,
                      file=console) as bar:
                run_unit_tasks(table, lambda i: task.remote(i, files.pop(i), ingest, paths.images, schema),
                               _finished_shards(downloaded, paths.downloads, set(pending), files),
                               max_in_flight=2 * cluster_cpus(), on_done=lambda _: bar.update(1))
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            failure.append(err)

    # img2dataset sets signal handlers, so it keeps the main thread; the ingest follows it in another
    ingester = threading.Thread(target=ingest_all, name="ingest", daemon=True)
    ingester.start()
    try:
        download(paths.kept, paths.downloads, config, "ray" if on_cluster() else "multiprocessing")
    finally:
        downloaded.set()
        ingester.join()
    if failure:
        raise failure[0]
    table.commit()
    missing = len(table.pending())
    if missing:
        raise UserError(f"{missing} of {expected} download shards did not finish; re-run the same command to retry")
    return table.finish()


def expected_shards(kept_dir: str, shard_size: int) -> int:
    """img2dataset cuts its shards per input file: ceil(rows / shard size) for each kept file (footers only)."""
    return sum(-(-pq.ParquetFile(os.path.join(kept_dir, name)).metadata.num_rows // shard_size)
               for name in sorted(os.listdir(kept_dir)) if name.endswith(".parquet"))


def _finished_shards(downloaded: threading.Event, folder: str, pending: set[int], files: dict[int, str]):
    """The pending shards as img2dataset finishes them (None while it waits), until it is done; each one's
    file goes into `files`."""
    while pending:
        done = downloaded.is_set()  # read before listing: a shard finished before the end is then seen
        for path in finished_shards(folder):
            index = shard_index(path)
            if index in pending:
                pending.discard(index)
                files[index] = path
                yield index
        if done:
            return
        yield None
        time.sleep(POLL_S)


def _clear_download_leftovers(folder: str) -> None:
    """A killed run's img2dataset scratch (_tmp) and its unfinished shards: safe to remove, as we hold the lock."""
    shutil.rmtree(os.path.join(folder, "_tmp"), ignore_errors=True)
    finished = set(finished_shards(folder))
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if name.endswith(".parquet") and path not in finished:
            os.remove(path)
