"""`lumos-curate`: build the images table from web metadata (laion, coyo) or the built-in sample."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer
from rich.console import Console

# Quiet the libraries' own chatter before they load (also inherited by embedded Ray and img2dataset workers).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("LANCE_LOG", "error")

from lumos.curation import options  # noqa: E402
from lumos.curation.download import DownloadConfig  # noqa: E402
from lumos.curation.sample import DEFAULT_PORT  # noqa: E402
from lumos.curation.unit_writer import COMMIT_EVERY_S  # noqa: E402
from lumos.floor.cli_app import new_app  # noqa: E402
from lumos.floor.errors import UserError  # noqa: E402

app = new_app("Curate images for Lumos: filter web metadata, download, and write an images table in Lance.",
              group=True, no_args_is_help=True)
err_console = Console(stderr=True)
COMMIT_EVERY = typer.Option(COMMIT_EVERY_S, help="Seconds between commits of finished work units (shards, tars, "
                            "fragments): what a killed job re-run does not redo.")


def _run_web(source: str, input: str, output: str, min_aesthetic: float, min_size: int,
             max_watermark: Optional[float], max_unsafe: Optional[float], image_size: int, no_download: bool,
             workers: Optional[int], threads: int, shard_size: int, timeout: int,
             allow_private_urls: bool = False, commit_every: float = COMMIT_EVERY_S) -> None:
    from lumos.curation.web_job import WebJob, run_web_job

    job = WebJob(
        source=source, input=input, output=output, min_size=min_size, min_aesthetic=min_aesthetic,
        max_watermark=max_watermark, max_unsafe=max_unsafe, download=not no_download,
        download_config=DownloadConfig(image_size=image_size, workers=workers or os.cpu_count() or 1,
                                       threads=threads, shard_size=shard_size, timeout=timeout,
                                       allow_private_urls=allow_private_urls),
        commit_every=commit_every,
    )
    _run(lambda: run_web_job(job, say=err_console.print),
         check=lambda: options.web_options(min_size, min_aesthetic, max_watermark, max_unsafe, image_size, workers,
                                           threads, shard_size, timeout, commit_every))


def _web_command(source: str, variants: str):
    def command(
        input: str = typer.Option(..., "--input", help=f"{source} metadata: a parquet file, a folder of them, a "
                                  f"glob, or an object-store URI ({variants})."),
        output: str = typer.Option(..., "--output", help="Output folder: images.lance, stats.json, kept/ "
                                   "(the filtered metadata) and _work/ (resume state)."),
        min_aesthetic: float = typer.Option(5.0, help="Keep rows whose LAION-V2 aesthetic score is >= this "
                                            "(paper: 5.0 for I2I, 5.5 for T2I). 0 turns the filter off."),
        min_size: int = typer.Option(512, help="Keep rows whose shorter side is >= this many pixels, in the "
                                     "metadata and again in the downloaded image."),
        max_watermark: Optional[float] = typer.Option(None, help="Keep rows whose watermark probability is <= "
                                                      "this. Default 0.5 when the metadata has the column."),
        max_unsafe: Optional[float] = typer.Option(None, help="Keep rows whose NSFW probability is <= this. "
                                                   "Default 0.5 when the metadata has the column."),
        image_size: int = typer.Option(512, help="Resize downloaded images so the shorter side is this "
                                       "(downscale only, aspect kept, no crop, no padding)."),
        no_download: bool = typer.Option(False, "--no-download", help="Only filter: write kept/ and stats.json."),
        workers: Optional[int] = typer.Option(None, help="Download processes (default: the number of cores)."),
        threads: int = typer.Option(32, help="Concurrent image requests per download process."),
        shard_size: int = typer.Option(10_000, help="Images per download shard, the unit of resume."),
        timeout: int = typer.Option(10, help="Seconds to wait for each image request."),
        allow_private_urls: bool = typer.Option(
            False, "--allow-private-urls", help="Also fetch URLs whose host is a loopback, private, link-local "
            "or cloud-metadata address: for a URL list that points at your own internal server; never for "
            "lists from the web."),
        commit_every: float = COMMIT_EVERY,
    ):
        _run_web(source, input, output, min_aesthetic, min_size, max_watermark, max_unsafe, image_size,
                 no_download, workers, threads, shard_size, timeout, allow_private_urls, commit_every)

    command.__doc__ = (
        f"Web images from {source} metadata.\n\nFilter the metadata with Ray Data, download the kept images "
        f"with img2dataset, write OUTPUT/images.lance. Resumable: re-run the same command after a crash."
    )
    return command


app.command("laion")(_web_command("laion", "2B-en, improved_aesthetics_*plus or lower-case columns"))
app.command("coyo")(_web_command("coyo", "COYO-700M columns"))


def _run(job, report=None, check=None) -> None:
    """Run `check()` (the options' values), then `job()`; a UserError becomes one line on stderr and exit code 2,
    the stats a summary on stdout."""
    from lumos.curation.job_dir import summary

    try:
        if check is not None:
            check()  # before the job: an impossible option fails before anything is written
        stats = job()
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    print((report or summary)(stats))


# Options shared by the local-dump commands.
DUMP_OUTPUT = typer.Option(..., "--output", help="Output folder: images.lance, stats.json and _work/.")
IMAGE_SIZE = typer.Option(512, help="Resize so the shorter side is this (downscale only, aspect kept, no crop).")
AESTHETIC_MODEL = typer.Option("laion-v2", help="laion-v2: LAION improved aesthetic predictor V2 on OpenAI CLIP "
                               "ViT-L/14 (real weights, needed for real data); tiny: a seeded random test model; "
                               "none: no score (with --min-aesthetic 0; score later with lumos-curate score).")
CLIP_WEIGHTS = typer.Option(None, help="Local file of the OpenAI CLIP ViT-L/14 weights (default: the open_clip "
                            "'openai' tag, from the Hugging Face cache or hub).")
AESTHETIC_WEIGHTS = typer.Option(None, help="Local copy of sac+logos+ava1-l14-linearMSE.pth (default: the torch "
                                 "hub cache or its GitHub URL).")


def _where(path: str) -> str:
    """A URI as given, a local path made absolute."""
    return path if "://" in path else os.path.abspath(path)


def _run_dump(reader_factory, output, min_size, image_size, min_aesthetic, aesthetic_model, clip_weights,
              aesthetic_weights, record: dict, commit_every: float = COMMIT_EVERY_S) -> None:
    from lumos.curation.dump_job import ScoreConfig, run_dump_job
    from lumos.curation.prepare import PrepareConfig

    def score():
        if aesthetic_model != "none":
            return ScoreConfig(aesthetic_model, clip_weights, aesthetic_weights, min_aesthetic)
        if min_aesthetic > 0:
            raise UserError(f"--aesthetic-model none with --min-aesthetic {min_aesthetic}: nothing would score the "
                            "images; pass --min-aesthetic 0 or choose a model")
        return None

    _run(lambda: run_dump_job(reader_factory(), output, PrepareConfig(min_size=min_size, image_size=image_size),
                              score(), record, say=err_console.print, commit_every=commit_every),
         check=lambda: options.dump_options(min_size, image_size, min_aesthetic, commit_every))


@app.command("sam")
def sam(
    input: str = typer.Option(..., "--input", help="Folder or s3:// prefix of SA-1B tars (sa_000000.tar, ...)."),
    output: str = DUMP_OUTPUT,
    min_size: int = typer.Option(512, help="Keep images whose shorter side is >= this many pixels."),
    min_aesthetic: float = typer.Option(5.0, help="Keep images scoring >= this (0: score, filter nothing)."),
    aesthetic_model: str = AESTHETIC_MODEL,
    clip_weights: Optional[str] = CLIP_WEIGHTS,
    aesthetic_weights: Optional[str] = AESTHETIC_WEIGHTS,
    captions: Optional[str] = typer.Option(None, help="Caption file, folder or glob (parquet or jsonl: file "
                                           "name + caption, as SAM-LLaVA-Captions10M) joined by file name."),
    image_size: int = IMAGE_SIZE,
    commit_every: float = COMMIT_EVERY,
):
    """Ingest an SA-1B dump (tars).

    Image sizes from each sa_N.json, checked against the image; score, filter, write.
    --input and --captions may be local paths or object-store URIs (s3://...); --captions a file, folder or
    glob. The tars are read in place and the captions joined in Ray tasks."""
    from lumos.curation.dumps import SamReader

    source, caption_files = _where(input), _where(captions) if captions else None
    _run_dump(lambda: SamReader(source, captions=caption_files), output, min_size, image_size, min_aesthetic,
              aesthetic_model, clip_weights, aesthetic_weights, {"input": source, "captions": captions}, commit_every)


@app.command("journeydb")
def journeydb(
    input: str = typer.Option(..., "--input", help="Folder or s3:// prefix of JourneyDB images: 000/<id>.jpg files or 000.tgz."),
    annotations: str = typer.Option(..., "--annotations", help="JourneyDB annotation jsonl, or a folder/glob of them (img_path, prompt, "
                                    "Task2.Caption)."),
    output: str = DUMP_OUTPUT,
    min_size: int = typer.Option(512, help="Keep images whose shorter side is >= this many pixels."),
    min_aesthetic: float = typer.Option(0.0, help="Keep images scoring >= this (0: score, filter nothing)."),
    aesthetic_model: str = AESTHETIC_MODEL,
    clip_weights: Optional[str] = CLIP_WEIGHTS,
    aesthetic_weights: Optional[str] = AESTHETIC_WEIGHTS,
    image_size: int = IMAGE_SIZE,
    commit_every: float = COMMIT_EVERY,
):
    """Ingest a JourneyDB dump.

    `prompt` as caption and Task2.Caption (when present) as long_caption. --input and
    --annotations (a jsonl, a folder or a glob of them) may be local paths or object-store URIs (s3://...);
    the annotations are parsed and de-duplicated in Ray tasks."""
    from lumos.curation.dumps import JourneyDBReader

    source, annotation_files = _where(input), _where(annotations)
    _run_dump(lambda: JourneyDBReader(source, annotation_files), output, min_size, image_size, min_aesthetic,
              aesthetic_model, clip_weights, aesthetic_weights, {"input": source, "annotations": annotation_files},
              commit_every)


@app.command("imagenet")
def imagenet(
    input: str = typer.Option(..., "--input", help="ImageNet folder or s3:// prefix: train/nXXXXXXXX/*.JPEG, or flat files "
                              "whose name ends in the synset."),
    output: str = DUMP_OUTPUT,
    synsets: Optional[str] = typer.Option(None, help="LOC_synset_mapping.txt: class index = line number "
                                          "(default: the sorted synsets found)."),
    min_size: int = typer.Option(256, help="Keep images whose shorter side is >= this many pixels."),
    min_aesthetic: float = typer.Option(0.0, help="Keep images scoring >= this (0: score, filter nothing)."),
    aesthetic_model: str = AESTHETIC_MODEL,
    clip_weights: Optional[str] = CLIP_WEIGHTS,
    aesthetic_weights: Optional[str] = AESTHETIC_WEIGHTS,
    image_size: int = IMAGE_SIZE,
    commit_every: float = COMMIT_EVERY,
):
    """Ingest ImageNet (train/ folders).

    Its synset and class index become columns. --input and --synsets may be local paths
    or object-store URIs (s3://...)."""
    from lumos.curation.dumps import ImageNetReader

    source = _where(input)
    _run_dump(lambda: ImageNetReader(source, _where(synsets) if synsets else None), output, min_size, image_size,
              min_aesthetic, aesthetic_model, clip_weights, aesthetic_weights, {"input": source, "synsets": synsets},
              commit_every)


@app.command("score")
def score(
    input: str = typer.Option(..., "--input", help="An images table (images.lance) whose aesthetic column to "
                              "add or refresh."),
    aesthetic_model: str = AESTHETIC_MODEL,
    clip_weights: Optional[str] = CLIP_WEIGHTS,
    aesthetic_weights: Optional[str] = AESTHETIC_WEIGHTS,
):
    """(Re)compute a table's aesthetic scores.

    The aesthetic column of an images table, in place, e.g. to check COYO's own scores."""
    from lumos.curation.dump_job import ScoreConfig
    from lumos.curation.score_job import score_table

    _run(lambda: score_table(input, ScoreConfig(aesthetic_model, clip_weights, aesthetic_weights), err_console.print),
         lambda s: f"scored {s['scored']} of {s['rows']} images with {s['model']}, mean score {s['mean']}")


@app.command("filter")
def filter_(
    input: str = typer.Option(..., "--input", help="An images table (images.lance) to drop rows from in place; "
                              "counts per reason go to images.filter.stats.json beside it."),
    min_aesthetic: float = typer.Option(0.0, help="Keep rows whose aesthetic score is >= this; a row without a "
                                        "score is dropped (aesthetic_missing). 0 turns the filter off."),
    min_size: int = typer.Option(0, help="Keep rows whose original shorter side is >= this many pixels. 0 turns "
                                 "the filter off."),
):
    """Drop rows by size and aesthetic score.

    In place, by the web filters, as Lance deletions (no image byte rewritten)."""
    from lumos.curation.table_filter import TableFilterConfig, filter_table, summary

    config = TableFilterConfig(min_aesthetic=min_aesthetic, min_size=min_size)
    _run(lambda: filter_table(_where(input), config, err_console.print), summary, check=config.check)


@app.command("compact")
def compact(
    input: str = typer.Option(..., "--input", help="A Lance table (an images table, or a features table no "
                              "encoder will be added to)."),
    rows_per_fragment: int = typer.Option(50_000, help="Target rows a fragment (~1-2 GB of 512-px JPEGs)."),
):
    """Merge a table's small fragments.

    Rewrite them into large ones on the Ray cluster, then clean old versions.
    Compact an images table before lumos-encode, not after (features follow its fragments)."""
    from lumos.curation.compact_job import compact_table

    _run(lambda: compact_table(input, rows_per_fragment, err_console.print),
         lambda s: f"compacted {s['rows']} rows: {s['fragments_before']} fragments -> {s['fragments_after']} "
                   f"in {s['seconds']:.1f}s")


@app.command("inspect")
def inspect(
    table: str = typer.Argument(..., help="An images table (DIR/images.lance, local or s3://)."),
    sheet: Optional[str] = typer.Option(None, help="Write a contact sheet PNG here (default: none)."),
    count: int = typer.Option(24, help="Random rows on the contact sheet."),
    seed: int = typer.Option(0, help="Seeds which rows the sheet shows."),
):
    """Show what an images table holds.

    Rows, fragments, bytes, columns, the job record and drop stats; --sheet: a contact sheet of random rows
    with their captions and aesthetic scores."""
    from lumos.curation.inspect_table import inspect_table

    def job():
        options.positive("--count", count)
        inspect_table(table, sheet, count, seed, say=print)

    try:
        job()
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command("mix")
def mix(
    input: list[str] = typer.Option(..., "--input", help="An images table; repeat for each source. Earlier "
                                    "inputs win duplicates."),
    output: str = DUMP_OUTPUT,
    take: list[str] = typer.Option([], "--take", help="SOURCE=N: keep at most N rows of that source (a seeded "
                                   "choice); repeat per source, e.g. --take laion=120000000."),
    dedup: str = typer.Option("sha256", help="sha256: drop images with the same bytes across and within "
                              "sources; none: only the same id."),
    seed: int = typer.Option(0, help="Seed of the choice made by --take."),
    commit_every: float = COMMIT_EVERY,
):
    """Mix images tables into one.

    Duplicates removed, caps per source, ids kept, stats per source."""
    from lumos.curation.mix_job import run_mix

    def job():
        caps = options.take_option(take)
        if dedup not in ("sha256", "none"):
            raise UserError(f"--dedup {dedup}: expected sha256 or none")
        options.at_least("--commit-every", commit_every, 0)
        return run_mix([i if "://" in i else os.path.abspath(i) for i in input], output, caps, dedup == "sha256",
                       seed, say=err_console.print, commit_every=commit_every)

    _run(job)


@app.command("sample")
def sample(
    output: str = typer.Option("demo-out", "--output", help="Folder for the sample's metadata and results."),
    port: int = typer.Option(DEFAULT_PORT, help="Port of the local image server on 127.0.0.1; a fixed port "
                             "keeps the sample's URLs, and so its image ids, the same from run to run."),
    workers: int = typer.Option(2, help="Download processes for the sample's images."),
):
    """Run `laion` on the built-in sample.

    LAION-shaped metadata and images served on 127.0.0.1."""
    from lumos.curation.sample import sample_rows, sample_routes, serve, write_sample_metadata

    rows = sample_rows()
    with serve(sample_routes(rows), port=port) as served:
        metadata = write_sample_metadata(rows, served.base_url, os.path.join(output, "metadata"))
        err_console.print(f"sample: {len(rows)} LAION-shaped rows, images served at {served.base_url}")
        _run_web("laion", metadata, os.path.join(output, "curated"), 5.0, 512, None, None, 512, False,
                 workers, 16, 16, 10, allow_private_urls=True)  # the sample's own server is on 127.0.0.1


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
