"""Trainer test data made the product's way: `lumos-curate journeydb` images, then `lumos-encode`."""

import json

from lumos.curation.dump_job import ScoreConfig, run_dump_job
from lumos.curation.dumps import JourneyDBReader
from lumos.curation.prepare import PrepareConfig
from lumos.curation.sample import encode, synthetic_image

ROWS = 24
LONG = list(range(0, ROWS, 3))  # the rows with a long caption (row 3 has no short one)


# Four aspect ratios (square, 2:1, 1:2, 4:3): rows that land in different PixArt buckets
ASPECTS = [(300, 300), (520, 260), (260, 520), (400, 300)]


def make_images(root, count=ROWS, image_size=256, aspects=False):
    lines = []
    for i in range(count):
        path = root / "jdb" / f"00{i % 2}" / f"x{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = ASPECTS[i % len(ASPECTS)] if aspects else (300 + 11 * i, 280 + 5 * i)
        path.write_bytes(encode(synthetic_image(*size, seed=i)))
        prompt = "" if i == 3 else f"picture {i}, " * (1 + i % 5)  # one row without a caption
        line = {"img_path": f"./00{i % 2}/x{i}.jpg", "prompt": prompt}
        if i % 3 == 0:  # a long caption on every third row, row 3 (no short caption) among them
            line["Task2"] = {"Caption": f"A longer description of picture {i}: " + "with more words, " * (2 + i % 4)}
        lines.append(json.dumps(line))
    (root / "anno.jsonl").write_text("\n".join(lines) + "\n")
    run_dump_job(JourneyDBReader(str(root / "jdb"), str(root / "anno.jsonl")), str(root / "curated"),
                 PrepareConfig(min_size=64, image_size=image_size), ScoreConfig(model="tiny"), {"input": "fixture"},
                 say=lambda *_: None)
    return str(root / "curated" / "images.lance")




def make_photo_images(root):
    """The built-in sample's photographs (scikit-image's), as a JourneyDB dump captioned as in the sample."""
    from lumos.curation.sample import PHOTOS, photo

    lines = []
    for name, caption in PHOTOS:
        path = root / "photos" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo(name).save(path, quality=90)
        lines.append(json.dumps({"img_path": f"./{name}.jpg", "prompt": caption}))
    (root / "photos.jsonl").write_text("\n".join(lines) + "\n")
    run_dump_job(JourneyDBReader(str(root / "photos"), str(root / "photos.jsonl")), str(root / "photos-curated"),
                 PrepareConfig(min_size=64, image_size=256), ScoreConfig(model="tiny"), {"input": "fixture"},
                 say=lambda *_: None)
    return str(root / "photos-curated" / "images.lance")
