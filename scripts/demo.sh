#!/usr/bin/env bash
# Set everything up, then run the whole chain on the built-in sample (offline: the sample's images are
# served from 127.0.0.1 by the command itself). Results land in demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NO_ALBUMENTATIONS_UPDATE=1 LANCE_LOG=error
.venv/bin/lumos-curate sample --output demo-out
.venv/bin/python - <<'PY'
import lance
ds = lance.dataset("demo-out/curated/images.lance")
print(f"demo-out/curated/images.lance: {ds.count_rows()} images, columns: {', '.join(ds.schema.names)}")
PY
