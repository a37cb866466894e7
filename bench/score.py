"""Aesthetic scoring throughput: the Ray pipeline of `lumos-curate` (decode + CLIP preprocessing in CPU
tasks, the model in an actor) against the bare model forward on tensors decoded beforehand, with the same
model and batch size. The ratio says how much of the model's speed the pipeline keeps.

    .venv/bin/python bench/score.py [--model bench-b16] [--images 256] [--batch 32]

bench-b16 is an open_clip ViT-B-16 (random weights, same compute as the real ViT-B/16) with the
predictor's head; on a GPU machine, --model laion-v2 times the real ViT-L/14 (needs its weights).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import pyarrow as pa
import torch
from PIL import Image

from lumos.curation.aesthetic import SPECS, load_aesthetic_model, preprocess
from lumos.curation.sample import encode, synthetic_image
from lumos.curation.scoring import add_scores
from lumos.floor.ray_runtime import init_ray
from lumos.schemas import images as cols


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench-b16", choices=sorted(SPECS))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("LANCE_LOG", "error")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images = [encode(synthetic_image(683, 512, seed=i)) for i in range(args.images)]  # as stored: short side 512

    # Bare: decode and preprocess everything first (not timed), then time the forward alone.
    model = load_aesthetic_model(args.model, device=device)
    transform = preprocess(SPECS[args.model].image_size)
    pixels = torch.stack([transform(Image.open(io.BytesIO(b))) for b in images])
    model(pixels[: args.batch].to(device))  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, len(pixels), args.batch):
        model(pixels[start : start + args.batch].to(device))
    if device == "cuda":
        torch.cuda.synchronize()
    bare_s = time.perf_counter() - t0
    del model

    import ray

    t0 = time.perf_counter()
    init_ray()
    startup_s = time.perf_counter() - t0
    rows = pa.Table.from_pylist([{cols.ID: str(i), cols.IMAGE: b, cols.DROP_REASON: None}
                                 for i, b in enumerate(images)], schema=cols.WORK_SCHEMA)
    t0 = time.perf_counter()
    blocks = [rows.slice(i, args.batch) for i in range(0, rows.num_rows, args.batch)]  # as the readers yield
    ds = add_scores(ray.data.from_arrow(blocks), args.model, batch_size=args.batch)
    arrivals = []  # (time, rows) of each scored batch as it reaches the driver
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        arrivals.append((time.perf_counter(), batch.num_rows))
    ray_s = time.perf_counter() - t0
    assert sum(n for _, n in arrivals) == args.images and len(arrivals) > 2
    # Steady state: from the first scored batch to the last, so the actor's one-off start (worker process,
    # imports, model load) is left out, as it is amortised over a real job; it is printed apart.
    steady = sum(n for _, n in arrivals[1:]) / (arrivals[-1][0] - arrivals[0][0])
    bare = args.images / bare_s

    print(f"model {args.model} on {device}, {args.images} images of 683x512, batch {args.batch}")
    print(f"bare forward on pre-decoded tensors : {bare:8.2f} images/s")
    print(f"ray stage, steady state             : {steady:8.2f} images/s  (decode + preprocess + model)")
    print(f"ray stage, whole run                : {args.images / ray_s:8.2f} images/s  (actor start and first "
          f"batch: {arrivals[0][0] - t0:.1f} s; ray start-up {startup_s:.1f} s, not included)")
    print(f"ratio ray/bare (steady state): {steady / bare:.2f}   (target >= 0.8)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
