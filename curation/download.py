"""Download the kept URLs with img2dataset: resumable by shard, resized on the way in.

img2dataset marks a shard finished by writing `<shard>_stats.json`; `incremental` mode skips those on a
re-run, so a killed download loses only the shards that were in flight. It also honours X-Robots-Tag
opt-outs (noai, noimageai, ...) by default: that is the site owner's consent, and we keep it.
Images are decoded by our `prepare()`, as in the dumps (web_decode.py: EXIF orientation, 16-bit and float
pixels, the pixel cap before decoding), and every request goes through the URL guard (url_guard.py) unless
`allow_private_urls` is set.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import os
import sys
import threading
from dataclasses import dataclass

from lumos.curation.prepare import PrepareConfig
from lumos.curation.url_guard import GuardedDownloader
from lumos.curation.web_decode import LumosDownloader
from lumos.schemas import web

_swap_lock = threading.Lock()  # img2dataset.main.Downloader is swapped for the length of one download


@dataclass(frozen=True)
class DownloadConfig:
    image_size: int = 512  # short side after resize; downscale only, aspect kept, no crop, no padding
    workers: int = 4  # img2dataset processes (multiprocessing) or Ray tasks at a time (ray)
    threads: int = 32  # concurrent HTTP requests per process
    shard_size: int = 10_000  # images per shard: the unit of resume
    timeout: int = 10  # seconds per request
    retries: int = 0
    max_pixels: int = PrepareConfig.max_pixels  # the dumps' cap: a larger image is dropped as too_large
    # Fetch loopback, private, link-local and cloud-metadata addresses too: only for the tests and the
    # built-in sample (127.0.0.1), or a URL list that points at your own internal server.
    allow_private_urls: bool = False


def download(kept_dir: str, output_dir: str, config: DownloadConfig, distributor: str) -> list[str]:
    """Download every URL in `kept_dir`'s parquet files; returns the finished shard files."""
    # the module, not the package's `main` function of the same name
    img2dataset_main = importlib.import_module("img2dataset.main")

    with _swap_lock:
        original = img2dataset_main.Downloader
        # pickled by reference: each worker process imports our decode (and the guard) with it
        img2dataset_main.Downloader = downloader_class(config)
        try:
            with _quiet(os.path.join(os.path.dirname(os.path.abspath(output_dir)), "img2dataset.log")):
                _img2dataset(kept_dir, output_dir, config, distributor)
        finally:
            img2dataset_main.Downloader = original
    return finished_shards(output_dir)


@contextlib.contextmanager
def _quiet(log_path: str):
    """img2dataset's own console lines (sharding notes, a bandwidth hint, per-shard stats, its bars) go to
    `log_path`, not the console, unless LUMOS_VERBOSE is set: our download+ingest bar says the progress.
    Python's stdout and stderr are redirected, and file descriptor 1 too, for the processes img2dataset
    starts (its stats logger prints from one); fd 2 stays, for the bar and for errors."""
    if os.environ.get("LUMOS_VERBOSE"):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        os.dup2(log.fileno(), 1)
        try:
            yield
        finally:
            log.flush()
            os.dup2(saved, 1)
            os.close(saved)


def downloader_class(config: DownloadConfig) -> type:
    """What stands in for img2dataset's Downloader: always our decode, the URL guard unless turned off."""
    return LumosDownloader if config.allow_private_urls else GuardedDownloader


def _img2dataset(kept_dir: str, output_dir: str, config: DownloadConfig, distributor: str) -> None:
    from img2dataset.main import download as img2dataset_download

    img2dataset_download(
        url_list=kept_dir,
        input_format="parquet",
        url_col=web.KEPT_URL,
        save_additional_columns=[web.KEPT_ID, *web.KEPT_COLUMNS.values()],
        output_folder=output_dir,
        output_format="parquet",
        encode_format="jpg",
        encode_quality=95,
        image_size=config.image_size,  # read back by LumosDownloader for its resizer
        resize_mode="keep_ratio",
        resize_only_if_bigger=True,
        min_image_size=0,  # we check the real size ourselves, to count it under its own reason
        max_image_area=config.max_pixels,  # read back by LumosDownloader: checked on the header, before decoding
        processes_count=config.workers,
        thread_count=config.threads,
        number_sample_per_shard=config.shard_size,
        timeout=config.timeout,
        retries=config.retries,
        compute_hash="sha256",  # of the bytes as downloaded, before resizing
        extract_exif=False,
        distributor=distributor,
        incremental_mode="incremental",
        enable_wandb=False,
    )


def shard_index(path: str) -> int:
    """A shard file's number (img2dataset names it by its number, zero-padded)."""
    return int(os.path.basename(path)[: -len(".parquet")])


def finished_shards(output_dir: str) -> list[str]:
    """Shard files whose `_stats.json` exists: img2dataset writes it only after the shard is complete."""
    shards = []
    for stats in sorted(glob.glob(os.path.join(output_dir, "*_stats.json"))):
        shard = os.path.basename(stats)[: -len("_stats.json")]
        path = os.path.join(output_dir, f"{shard}.parquet")
        if os.path.exists(path):
            shards.append(path)
    return shards
