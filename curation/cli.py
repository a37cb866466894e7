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

from lumos.curation.download import DownloadConfig  # noqa: E402
from lumos.curation.errors import UserError  # noqa: E402
from lumos.curation.sample import DEFAULT_PORT  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Curate images for Lumos: filter web metadata, download, and write an images table in Lance.",
)
err_console = Console(stderr=True)


def _run_web(source: str, input: str, output: str, min_aesthetic: float, min_size: int,
             max_watermark: Optional[float], max_unsafe: Optional[float], image_size: int, no_download: bool,
             workers: Optional[int], threads: int, shard_size: int, timeout: int) -> None:
    from lumos.curation.job_dir import summary
    from lumos.curation.web_job import WebJob, run_web_job

    job = WebJob(
        source=source, input=input, output=output, min_size=min_size, min_aesthetic=min_aesthetic,
        max_watermark=max_watermark, max_unsafe=max_unsafe, download=not no_download,
        download_config=DownloadConfig(image_size=image_size, workers=workers or os.cpu_count() or 1,
                                       threads=threads, shard_size=shard_size, timeout=timeout),
    )
    try:
        stats = run_web_job(job, say=err_console.print)
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    print(summary(stats))


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
    ):
        _run_web(source, input, output, min_aesthetic, min_size, max_watermark, max_unsafe, image_size,
                 no_download, workers, threads, shard_size, timeout)

    command.__doc__ = (
        f"Filter {source} metadata with Ray Data, download the kept images with img2dataset, write "
        f"OUTPUT/images.lance. Resumable: re-run the same command after a crash."
    )
    return command


app.command("laion")(_web_command("laion", "2B-en, improved_aesthetics_*plus or lower-case columns"))
app.command("coyo")(_web_command("coyo", "COYO-700M columns"))


@app.command("sample")
def sample(
    output: str = typer.Option("demo-out", "--output", help="Folder for the sample's metadata and results."),
    port: int = typer.Option(DEFAULT_PORT, help="Port of the local image server on 127.0.0.1; a fixed port "
                             "keeps the sample's URLs, and so its image ids, the same from run to run."),
    workers: int = typer.Option(2, help="Download processes for the sample's images."),
):
    """Run `laion` on the built-in sample: LAION-shaped metadata and images served on 127.0.0.1."""
    from lumos.curation.sample import sample_rows, sample_routes, serve, write_sample_metadata

    rows = sample_rows()
    with serve(sample_routes(rows), port=port) as served:
        metadata = write_sample_metadata(rows, served.base_url, os.path.join(output, "metadata"))
        err_console.print(f"sample: {len(rows)} LAION-shaped rows, images served at {served.base_url}")
        _run_web("laion", metadata, os.path.join(output, "curated"), 5.0, 512, None, None, 512, False,
                 workers, 16, 16, 10)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
