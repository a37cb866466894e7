"""`lumos-encode` throughput and storage.

1. Throughput: the whole encode job (read blobs from Lance, decode, preprocess, encode, stage, merge) against
   the bare encoder forward on tensors decoded beforehand, in one process, same encoder and batch. The
   encoder is `dino-b` with random weights (same compute as the real DINO ViT-B/16). Ray's start-up is
   timed apart; the actor's start is inside the job's time.
2. Storage: bytes on disk a row of a features table holding sd-vae@256 (mean + std) and dino-b CLS
   (target <= 18 KB); and of a T5 table against its payload, valid tokens × 8 KB (target <= 1.15x). The T5
   is `bench-t5-4096`: T5-XXL's width (4096) at one layer with random weights, so that a CPU makes vectors
   of the real size; captions of 10 to 119 byte tokens, cleaned as official Lumos (the default).
3. Caption cleaning (`--clean-captions official`): its CPU time a caption against the tokenizer's on the same
   captions, in this process, one core.

    .venv/bin/python bench/encode.py [--images 256] [--batch 32] [--storage-images 32]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

import lance
import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from lumos.curation.sample import encode, synthetic_image
from lumos.floor.ray_runtime import init_ray
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.pipeline.encoders.captions import clean_official
from lumos.schemas import images as cols


def images_table(path: str, count: int, per_fragment: int = 32, captions: bool = False) -> str:
    words = "a photo of an old stone bridge over a quiet river at dawn with mist and trees".split()
    rows = [{cols.ID: f"{i:08d}", cols.SOURCE: "bench", cols.KEY: str(i), cols.ORIGINAL_WIDTH: 683,
             cols.ORIGINAL_HEIGHT: 512, cols.WIDTH: 683, cols.HEIGHT: 512, cols.SHA256: str(i),
             cols.CAPTION: " ".join(words * 10)[: 9 + (i * 37) % 110] if captions else None,
             cols.LONG_CAPTION: " ".join(words * 10)[:118] if captions and i % 2 else None,
             cols.IMAGE: encode(synthetic_image(683, 512, seed=i))} for i in range(count)]
    schema = cols.images_schema({"job": {"source": "bench"}}, unique_ids=True)  # as lumos-curate marks its tables
    lance.write_dataset(pa.Table.from_pylist(rows, schema=schema), path, schema=schema,
                        max_rows_per_file=per_fragment)
    return path


def disk_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--storage-images", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("LANCE_LOG", "error")
    say = lambda *_: None  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="lumos-bench-") as tmp:
        table = images_table(os.path.join(tmp, "images.lance"), args.images)

        config = EncoderConfig("dino-b", random_weights=True)
        encoder = config.build().load("cpu")
        blobs = [b.read() for b in lance.dataset(table).take_blobs(cols.IMAGE, indices=list(range(args.images)))]
        pixels = torch.from_numpy(np.stack([encoder.preprocess(Image.open(io.BytesIO(b)).convert("RGB"))
                                            for b in blobs]))  # decoded beforehand: not timed
        encoder.forward(pixels[: args.batch])  # warm-up
        t0 = time.perf_counter()
        for start in range(0, args.images, args.batch):
            encoder.forward(pixels[start : start + args.batch])
        bare_s = time.perf_counter() - t0
        del encoder, pixels

        t0 = time.perf_counter()
        init_ray()
        startup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_encode(table, os.path.join(tmp, "features.lance"), [config], batch_size=args.batch, say=say)
        job_s = time.perf_counter() - t0
        assert lance.dataset(os.path.join(tmp, "features.lance")).count_rows() == args.images

        small = images_table(os.path.join(tmp, "small.lance"), args.storage_images)
        both = os.path.join(tmp, "vae_dino.lance")
        run_encode(small, both, [EncoderConfig("sd-vae", 256, random_weights=True), config],
                   batch_size=8, say=say)
        per_row = disk_bytes(both) / lance.dataset(both).count_rows()

        captioned = images_table(os.path.join(tmp, "captioned.lance"), args.storage_images, captions=True)
        text = os.path.join(tmp, "t5.lance")
        run_encode(captioned, text, [EncoderConfig("bench-t5-4096")], batch_size=8, say=say)
        t5 = lance.dataset(text)
        valid_tokens = sum(t5.to_table(columns=["bench_t5_4096_len", "bench_t5_4096_long_len"]).to_pandas()
                           .fillna(0).sum())
        t5_bytes = disk_bytes(text)
        t5_ratio = t5_bytes / (valid_tokens * 4096 * 2)
        captions = lance.dataset(captioned).to_table(columns=[cols.CAPTION])[cols.CAPTION].to_pylist() * 32
        t5_encoder = EncoderConfig("bench-t5-4096").build()
        t5_encoder.tokenize([clean_official(captions[0])])  # warm-up: diffusers' import, the tokenizer's build
        t0 = time.perf_counter()
        cleaned = [clean_official(c) for c in captions]
        clean_s = (time.perf_counter() - t0) / len(captions)
        t0 = time.perf_counter()
        t5_encoder.tokenize(cleaned)
        tokenize_s = (time.perf_counter() - t0) / len(captions)

    bare, job = args.images / bare_s, args.images / job_s
    print(f"dino-b (random weights) on cpu, {args.images} images of 683x512, batch {args.batch}")
    print(f"bare forward on pre-decoded tensors : {bare:8.2f} images/s")
    print(f"lumos-encode end to end             : {job:8.2f} images/s  (read, decode, preprocess, encode, "
          f"write; ray start-up {startup_s:.1f} s not included)")
    print(f"ratio encode/bare: {job / bare:.2f}   (target >= 0.8)")
    print(f"storage, sd-vae@256 mean+std + dino-b cls: {per_row / 1024:.2f} KB a row on disk over "
          f"{args.storage_images} rows (target <= 18 KB; the raw fp16 payload is 17.5 KB)")
    print(f"storage, t5 (width 4096) valid tokens + lengths: {t5_bytes / args.storage_images / 1024:.1f} KB "
          f"a row on disk for {valid_tokens / args.storage_images:.1f} valid tokens a row (captions + long "
          f"captions); {t5_ratio:.3f} x the payload of valid tokens x 8 KB (target <= 1.15)")
    print(f"caption cleaning (official): {clean_s * 1e6:.0f} us a caption on one core, {clean_s / tokenize_s:.1f} x "
          f"the byte tokenizer's {tokenize_s * 1e6:.0f} us ({len(captions)} captions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
