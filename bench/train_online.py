"""What caching the features buys: steps/s of the same DiT and batch trained

  - from cached features (the trainer's loader streaming sd-vae mean/std + dino-b CLS from Lance), against
  - encoding on the fly: the real SD VAE and DINO ViT-B/16 architectures (random weights, fp32) run on each
    batch of images (already decoded and resized in memory, so the online side is not charged for JPEG
    decoding), their outputs handed to the same training step.

    .venv/bin/python bench/train_online.py [--model DiT-S/2] [--batch 8] [--steps 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("LANCE_LOG", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from train_data import i2i_features_table  # noqa: E402

from lumos.curation.sample import synthetic_image  # noqa: E402
from lumos.pipeline.encoders import EncoderConfig  # noqa: E402
from lumos.schemas import features  # noqa: E402
from lumos.trainer.train import Run, TrainConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="DiT-S/2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lumos-bench-") as tmp:
        data = i2i_features_table(os.path.join(tmp, "features.lance"), 4096)
        run = Run(TrainConfig.of(mode="i2i", data=data, output=os.path.join(tmp, "run"), model=args.model,
                              batch_size=args.batch, precision="fp32", workers=0, lr=1e-4, warmup=1))
        vae = EncoderConfig("sd-vae", random_weights=True).build().load()
        dino = EncoderConfig("dino-b", random_weights=True).build().load()
        images = [synthetic_image(683, 512, seed=i) for i in range(args.batch)]
        vae_pixels = torch.from_numpy(np.stack([vae.preprocess(im) for im in images]))  # (N, 3, 256, 256)
        dino_pixels = torch.from_numpy(np.stack([dino.preprocess(im) for im in images]))  # (N, 3, 224, 224)
        stream = run.loader()

        def online_batch(template: dict) -> dict:
            with torch.no_grad():
                out = {**vae.forward(vae_pixels), **dino.forward(dino_pixels)}
            n = args.batch
            return {**template,
                    "mean": torch.from_numpy(out[features.mean_column("sd-vae")]).view(n, 4, 32, 32),
                    "std": torch.from_numpy(out[features.std_column("sd-vae")]).view(n, 4, 32, 32),
                    "cond": torch.from_numpy(out[features.cls_column("dino-b")])[:, None]}

        for _ in range(2):  # warm-up both paths
            run.train_step(next(stream))
            run.train_step(online_batch(next(stream)))
        cached_s = online_s = 0.0
        for _ in range(args.steps):  # alternating, so that machine noise hits both alike
            t0 = time.perf_counter()
            run.train_step(next(stream))
            cached_s += time.perf_counter() - t0
            template = next(stream)  # only step/weight bookkeeping is reused; the features are recomputed
            t0 = time.perf_counter()
            run.train_step(online_batch(template))
            online_s += time.perf_counter() - t0

    cached, online = args.steps / cached_s, args.steps / online_s
    print(f"{args.model} fp32 on {torch.get_num_threads()} CPU threads, batch {args.batch}, {args.steps} steps each")
    print(f"from cached features (Lance)              : {cached:.3f} steps/s")
    print(f"encoding on the fly (SD VAE@256 + DINO-B) : {online:.3f} steps/s")
    print(f"speed-up from caching: {cached / online:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
