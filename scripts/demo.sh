#!/usr/bin/env bash
# Set everything up, then run the whole chain on the built-in sample (offline: the sample's images are
# served from 127.0.0.1 by the command itself). Results land in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NO_ALBUMENTATIONS_UPDATE=1 LANCE_LOG=error
.venv/bin/lumos-curate sample --output demo-out
# Latents a CPU learns in a minute: the photos themselves at 16 px (`pixels`; the real recipe: sd-vae at 256).
# The condition: the 17 tokens (CLS + 16 patches) of a seeded random ViT of DINO's family at 64 px (`tiny-dino`;
# the real recipe: dino-b's CLS). No weights can be fetched here, so the encoders are test models.
.venv/bin/lumos-encode --encoder pixels --resolution 16 \
  --input demo-out/curated/images.lance --output demo-out/features.lance
.venv/bin/lumos-encode --encoder tiny-dino --tokens all --resolution 64 --encoder tiny-t5 \
  --input demo-out/curated/images.lance --output demo-out/features.lance
# DiT-T/2 learns to regenerate each photo from its condition (a small model memorising 8 photos: the mechanism,
# not the quality of the real recipe, DiT-XL/2 on 190M images), then T2I fine-tuning from it on the captions.
rm -rf demo-out/i2i demo-out/t2i
TINY=(--model DiT-T/2 --latents pixels-16 --precision fp32 --batch-size 8 --lr 1e-3 --warmup 10 --ema 0.999
      --grad-clip 1 --weight-decay 0 --workers 0 --log-every 100)
.venv/bin/lumos-train i2i --data demo-out/features.lance --output demo-out/i2i --condition tiny-dino \
  --condition-tokens all --steps 5000 --save-every 5000 "${TINY[@]}"
.venv/bin/lumos-train t2i --data demo-out/features.lance --output demo-out/t2i --text tiny-t5 --init demo-out/i2i \
  --steps 1500 --save-every 1500 "${TINY[@]}"
# Samples: the photos as they were downloaded, each a grid row of 4 samples conditioned on its features.
rm -rf demo-out/inputs demo-out/export
.venv/bin/python - <<'PY'
import os
import lance
ds = lance.dataset("demo-out/curated/images.lance")
os.makedirs("demo-out/inputs")
for i, blob in enumerate(ds.take_blobs("image", indices=list(range(ds.count_rows())))):
    with open(f"demo-out/inputs/{i}.jpg", "wb") as f:
        f.write(blob.read())
PY
.venv/bin/lumos-sample i2i --checkpoint demo-out/i2i $(printf -- '--image %s ' demo-out/inputs/*.jpg) --num 4 \
  --cfg 2 --output demo-out/i2i-grid.png
.venv/bin/lumos-sample interpolate --checkpoint demo-out/i2i --image demo-out/inputs/0.jpg \
  --image demo-out/inputs/1.jpg --num 8 --cfg 2 --output demo-out/interpolate.png
.venv/bin/lumos-sample t2i --checkpoint demo-out/t2i --prompt "an astronaut in front of a flag" \
  --prompt "a cup of coffee on a saucer" --num 4 --output demo-out/t2i-grid.png
.venv/bin/lumos-export --checkpoint demo-out/t2i --output demo-out/export
.venv/bin/python - <<'PY'
import json
import lance
for run in ("demo-out/i2i", "demo-out/t2i"):
    rows = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    print(f"{run}: loss {rows[0]['loss']:.4f} at step {rows[0]['step']} -> {rows[-1]['loss']:.4f} at step {rows[-1]['step']}")
for path in ("demo-out/curated/images.lance", "demo-out/features.lance"):
    ds = lance.dataset(path)
    print(f"{path}: {ds.count_rows()} rows, columns: {', '.join(ds.schema.names)}")
from PIL import Image
for grid in ("demo-out/i2i-grid.png", "demo-out/interpolate.png", "demo-out/t2i-grid.png", "demo-out/i2i/loss.png"):
    print(f"{grid}: {Image.open(grid).size[0]}x{Image.open(grid).size[1]}")
print("demo-out/export: " + ", ".join(sorted(__import__("os").listdir("demo-out/export"))))
PY
