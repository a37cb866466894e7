"""`lumos-eval fid`: FID of a run against a reference images table, or between two image sets.

    lumos-eval fid --checkpoint RUN --reference images.lance [--num 30000]
        generates --num images conditioned on the reference rows (I2I: each row's image through the run's
        condition encoder; T2I: each row's caption), then FID against the reference images, whose statistics
        are cached once per (table version, Inception weights, resolution, count).
    lumos-eval fid --a DIR_OR_TABLE --b DIR_OR_TABLE
        FID between two image sets (folders of images or Lance images tables).

One JSON object on stdout (and in --output when given). --save-samples is locked for the run (one writer);
the statistics cache is locked while a file is written into it (floor/output_lock.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Optional

import typer
from rich.console import Console

os.environ.setdefault("LANCE_LOG", "error")

from lumos.floor.cli_app import VERSION, new_app  # noqa: E402
from lumos.floor.errors import UserError  # noqa: E402
from lumos.floor.output_lock import output_lock  # noqa: E402
from lumos.generation.sample_cli import CFG, DEVICE, PRECISION, SCHEDULER, SEED, STEPS  # noqa: E402

err_console = Console(stderr=True)
app = new_app(__doc__, no_args_is_help=True)


@app.callback()
def main(version: bool = VERSION):
    """Evaluate lumos-train runs."""
    del version  # handled by its callback


@app.command()
def fid(checkpoint: Optional[str] = typer.Option(None, help="A lumos-train run folder or checkpoint to generate from."),
        reference: Optional[str] = typer.Option(None, help="With --checkpoint: the reference Lance images table "
                                                "(its images are the reference set, its rows the conditions)."),
        num: int = typer.Option(30000, help="With --checkpoint: images to generate (the paper: 30K for MS-COCO, "
                                "50K for ImageNet); the reference set is its first min(num, rows) images."),
        a: Optional[str] = typer.Option(None, help="Without --checkpoint: the first image set (folder or table)."),
        b: Optional[str] = typer.Option(None, help="Without --checkpoint: the second image set (folder or table)."),
        inception: Optional[str] = typer.Option(None, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth; "
                                                "default: fetched from pytorch-fid's release through the torch hub "
                                                "cache."),
        resolution: Optional[int] = typer.Option(None, help="Images are center-cropped and resized to this side "
                                                 "before Inception (default: the run's resolution, else 256)."),
        batch_size: int = typer.Option(32, help="Images per generation / Inception batch."),
        steps: int = STEPS, cfg: float = CFG, scheduler: str = SCHEDULER, seed: int = SEED,
        device: str = DEVICE, precision: str = PRECISION,
        cache_dir: Optional[str] = typer.Option(None, help="Where reference statistics are cached (default "
                                                "~/.cache/lumos/fid)."),
        save_samples: Optional[str] = typer.Option(None, help="Also write the generated images as PNGs here."),
        output: Optional[str] = typer.Option(None, help="Also write the JSON result to this file.")):
    """Fréchet Inception Distance, pytorch-fid's network and weights."""
    try:
        result = _fid(checkpoint, reference, num, a, b, inception, resolution, batch_size, steps, cfg, scheduler,
                      seed, device, precision, cache_dir, save_samples)
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    text = json.dumps(result, sort_keys=True)
    if output:  # a file, not a folder: written whole or not at all, so two runs never interleave in it
        tmp = f"{output}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, output)
    print(text)


def _fid(checkpoint, reference, num, a, b, inception_path, resolution, batch_size, steps, cfg, scheduler, seed,
         device, precision, cache_dir, save_samples) -> dict:
    import numpy as np

    from lumos.generation import fid as F
    from lumos.generation.sample_cli import pick_device

    started = time.perf_counter()
    if checkpoint is None and (a is None or b is None or reference is not None):
        raise UserError("pass --checkpoint RUN --reference TABLE, or --a SET --b SET")
    if checkpoint is not None and (reference is None or a is not None or b is not None):
        raise UserError("--checkpoint needs --reference TABLE (and takes no --a/--b)")
    for name, value in (("--num", num), ("--batch-size", batch_size)):
        if value < 1:
            raise UserError(f"{name} must be >= 1")
    cache_dir = cache_dir or F.default_cache_dir()
    dev = pick_device(device)
    if checkpoint is None:
        first, second = F.ImageSet(a), F.ImageSet(b)
        resolution = resolution or 256
        net = F.Inception(inception_path, dev)
        mu1, s1, hit1 = F.cached_statistics(first, net, len(first), resolution, cache_dir, batch_size)
        mu2, s2, hit2 = F.cached_statistics(second, net, len(second), resolution, cache_dir, batch_size)
        return {"fid": F.frechet_distance(mu1, s1, mu2, s2), "a": a, "b": b, "num_a": len(first),
                "num_b": len(second), "resolution": resolution, "inception": net.id, "cached": [hit1, hit2],
                "seconds": round(time.perf_counter() - started, 1)}

    ref = F.ImageSet(reference)
    if not ref.table:
        raise UserError(f"--reference {reference}: expected a Lance images table (lumos-curate's images.lance)")
    session = sampling_session(checkpoint, device, precision, resolution)
    resolution = session.latents.resolution
    net = F.Inception(inception_path, dev)
    with output_lock(save_samples, "lumos-eval fid") if save_samples else contextlib.nullcontext():
        features = [net.features(batch) for batch in generate(session, ref, num, batch_size, steps, cfg, scheduler,
                                                                 seed, save_samples)]
    mu1, s1 = F.statistics(np.concatenate(features))
    mu2, s2, hit = F.cached_statistics(ref, net, min(num, len(ref)), resolution, cache_dir, batch_size)
    return {"fid": F.frechet_distance(mu1, s1, mu2, s2), "checkpoint": session.trained.path,
            "reference": reference, "num_generated": num, "num_reference": min(num, len(ref)),
            "resolution": resolution, "inception": net.id, "reference_stats_cached": hit, "steps": steps,
            "cfg": cfg, "scheduler": scheduler, "seed": seed, "seconds": round(time.perf_counter() - started, 1)}


def sampling_session(checkpoint, device, precision, resolution):
    from lumos.generation.sample_cli import Session
    from lumos.generation.sampler import find_checkpoint

    _, config = find_checkpoint(checkpoint)
    session = Session(checkpoint, config["train"]["mode"], device, precision)
    if resolution is not None and resolution != session.latents.resolution:
        raise UserError(f"--resolution {resolution}: the run makes {session.latents.resolution}px images")
    return session


def generate(session, ref, num, batch_size, steps, cfg, scheduler, seed, save_samples):
    """`num` images from the run in uint8 batches, conditioned on the reference rows in order (cycling when
    num > rows): I2I on each row's image, T2I on each row's caption (rows without one are passed over)."""
    import io

    from PIL import Image
    from tqdm import tqdm

    from lumos.schemas import images as cols

    ds = ref.dataset()
    t2i = session.trained.mode == "t2i"
    if t2i:
        captions = ds.to_table(columns=[cols.CAPTION])[cols.CAPTION].to_pylist()
        rows = [i for i, c in enumerate(captions) if c and c.strip()]
        if not rows:
            raise UserError(f"--reference {ref.path}: no row has a caption to condition a t2i run on")
    else:
        rows = list(range(ds.count_rows()))
    if save_samples:
        os.makedirs(save_samples, exist_ok=True)
    for start in tqdm(range(0, num, batch_size), desc="generating", unit="batch", dynamic_ncols=True):
        picked = [rows[i % len(rows)] for i in range(start, min(start + batch_size, num))]
        if t2i:
            cond, mask = session.condition([captions[i] for i in picked])
        else:
            images = []
            for blob in ds.take_blobs(cols.IMAGE, indices=picked):
                with Image.open(io.BytesIO(blob.read())) as im:
                    images.append(im.convert("RGB"))
            cond, mask = session.condition(images), None
        batch = session.images(cond, mask, num=1, steps=steps, cfg=cfg, scheduler=scheduler,
                               seed=seed * 1_000_003 + start)
        if save_samples:
            for j, image in enumerate(batch):
                Image.fromarray(image).save(os.path.join(save_samples, f"{start + j:06d}.png"))
        yield batch


if __name__ == "__main__":
    app()
