"""Trainer test data made the product's way: `lumos-curate journeydb` images, then `lumos-encode`."""

import json

from lumos.curation.dump_job import ScoreConfig, run_dump_job
from lumos.curation.dumps import JourneyDBReader
from lumos.curation.prepare import PrepareConfig
from lumos.curation.sample import encode, synthetic_image

ROWS = 24


def make_images(root, count=ROWS, image_size=256):
    lines = []
    for i in range(count):
        path = root / "jdb" / f"00{i % 2}" / f"x{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(synthetic_image(300 + 11 * i, 280 + 5 * i, seed=i)))
        prompt = "" if i == 3 else f"picture {i}, " * (1 + i % 5)  # one row without a caption
        lines.append(json.dumps({"img_path": f"./00{i % 2}/x{i}.jpg", "prompt": prompt}))
    (root / "anno.jsonl").write_text("\n".join(lines) + "\n")
    run_dump_job(JourneyDBReader(str(root / "jdb"), str(root / "anno.jsonl")), str(root / "curated"),
                 PrepareConfig(min_size=64, image_size=image_size), ScoreConfig(model="tiny"), {"input": "fixture"},
                 say=lambda *_: None)
    return str(root / "curated" / "images.lance")


