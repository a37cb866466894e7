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
.venv/bin/python - <<'PY'
import lance
for path in ("demo-out/curated/images.lance", "demo-out/features.lance"):
    ds = lance.dataset(path)
    print(f"{path}: {ds.count_rows()} rows, columns: {', '.join(ds.schema.names)}")
PY
