#!/usr/bin/env bash
# Set everything up, then run the whole chain on the built-in sample (offline: the sample's images are
# served from 127.0.0.1 by the command itself). Results land in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NO_ALBUMENTATIONS_UPDATE=1 LANCE_LOG=error
.venv/bin/lumos-curate sample --output demo-out
# The tiny encoders are seeded random test models of the real families (no weights can be fetched here).
.venv/bin/lumos-encode --encoder tiny-vae --encoder tiny-dino --encoder tiny-t5 \
  --input demo-out/curated/images.lance --output demo-out/features.lance
# A short CPU training of the test-sized DiT on those features (the real recipe: DiT-XL/2, fp16, on GPUs),
# then T2I fine-tuning from it on the tiny T5 features.
rm -rf demo-out/i2i demo-out/t2i
TINY=(--model DiT-T/2 --latents tiny-vae --precision fp32 --batch-size 8 --lr 1e-3 --warmup 10 --ema 0.99 --workers 0)
.venv/bin/lumos-train i2i --data demo-out/features.lance --output demo-out/i2i --condition tiny-dino \
  --steps 200 --save-every 100 --sample-every 100 --sample-rows 4 "${TINY[@]}"
.venv/bin/lumos-train t2i --data demo-out/features.lance --output demo-out/t2i --text tiny-t5 --init demo-out/i2i \
  --steps 50 --save-every 50 "${TINY[@]}"
# Samples from the runs: the I2I inputs are two of the images held back from training.
rm -rf demo-out/inputs demo-out/export
.venv/bin/python - <<'PY'
import json, os
import lance
ids = json.load(open("demo-out/i2i/samples/held-back.json"))["ids"][:2]
ds = lance.dataset("demo-out/curated/images.lance")
rows = ds.to_table(columns=["id"], with_row_address=True).to_pylist()
os.makedirs("demo-out/inputs")
for i, want in enumerate(ids):
    address = next(r["_rowaddr"] for r in rows if r["id"] == want)
    with open(f"demo-out/inputs/held-back-{i}.jpg", "wb") as f:
        f.write(ds.take_blobs("image", addresses=[address])[0].read())
PY
A=demo-out/inputs/held-back-0.jpg B=demo-out/inputs/held-back-1.jpg
.venv/bin/lumos-sample i2i --checkpoint demo-out/i2i --image $A --image $B --num 4 --output demo-out/i2i-grid.png
.venv/bin/lumos-sample interpolate --checkpoint demo-out/i2i --image $A --image $B --num 6 --output demo-out/interpolate.png
.venv/bin/lumos-sample t2i --checkpoint demo-out/t2i --prompt "sample picture 3" --prompt "sample picture 8" \
  --num 4 --output demo-out/t2i-grid.png
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
for grid in ("demo-out/i2i/samples/step-0000200.png", "demo-out/i2i-grid.png", "demo-out/interpolate.png",
             "demo-out/t2i-grid.png"):
    print(f"{grid}: {Image.open(grid).size[0]}x{Image.open(grid).size[1]}")
print("demo-out/export: " + ", ".join(sorted(__import__("os").listdir("demo-out/export"))))
PY
