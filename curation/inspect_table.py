"""`lumos-curate inspect TABLE`: what an images table holds, in a screenful, and a contact sheet.

It prints the rows, fragments (rows a fragment), bytes (from the fragments' metadata: no file listing), the
columns, the job record the table was written with, and the drop stats of the job (DIR/stats.json) and of any
later `lumos-curate filter`; it writes a contact sheet of N rows drawn at random (seeded), each image with
its caption and aesthetic score. The driver reads the manifest and N rows, whatever the table's size.
"""

from __future__ import annotations

import io
import json
import math
import os
import textwrap

import numpy as np

from lumos.curation.job_dir import JobDir
from lumos.curation.table_filter import stats_file as filter_stats_file
from lumos.floor import fs
from lumos.floor.lance_io import open_images_table
from lumos.schemas import images as cols

THUMB = 160  # px, the side of a contact-sheet cell's image
TEXT_LINES = 3  # caption lines under each image (then the score line)
SHOWN = (cols.ID, cols.SOURCE, cols.CAPTION, cols.AESTHETIC, cols.WIDTH, cols.HEIGHT)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def describe(ds, uri: str) -> list[str]:
    """The lines `inspect` prints about the table at `uri` (opened as `ds`)."""
    fragments = ds.get_fragments()
    rows = [f.count_rows() for f in fragments]
    data = sum(d.file_size_bytes or 0 for f in fragments for d in f.metadata.files)
    lines = [f"{uri}: {sum(rows)} rows in {len(fragments)} fragments "
             f"({min(rows, default=0)}-{max(rows, default=0)} rows a fragment), {_size(data)} of data, "
             f"version {ds.version}",
             "columns: " + ", ".join(f"{f.name} ({f.type})" for f in ds.schema)]
    job = cols.job_of(ds.schema).get("job", {})
    if job:
        lines.append("written by: " + json.dumps(job, sort_keys=True))
    folder = os.path.dirname(uri.rstrip("/"))
    for name, path in (("job", JobDir(folder).stats), ("filter", filter_stats_file(uri))):
        if fs.exists(path):
            stats = fs.read_json(path)
            dropped = ", ".join(f"{r} {n}" for r, n in sorted(stats.get("dropped", {}).items(), key=lambda kv: -kv[1]))
            lines.append(f"{name} stats: {stats.get('rows')} rows in, {stats.get('kept')} kept; "
                         f"dropped: {dropped or 'none'}")
    return lines


def contact_sheet(ds, count: int, seed: int, path: str) -> int:
    """A PNG at `path` of `count` rows drawn at random (seeded), each image with its caption and score; returns
    the number of rows shown."""
    from PIL import Image, ImageDraw, ImageFont

    total = ds.count_rows()
    if total == 0:
        return 0
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(count, total), replace=False)).tolist()
    rows = ds.take(picks, columns=list(SHOWN)).to_pylist()
    blobs = ds.take_blobs(cols.IMAGE, indices=picks)
    font = ImageFont.load_default()
    line_h = 12
    cell_w, cell_h = THUMB + 8, THUMB + 8 + line_h * (TEXT_LINES + 1)
    per_row = min(len(rows), 6)
    sheet = Image.new("RGB", (per_row * cell_w, math.ceil(len(rows) / per_row) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    chars = THUMB // 6  # the default bitmap font is ~6 px a character
    for k, (row, blob) in enumerate(zip(rows, blobs)):
        x, y = (k % per_row) * cell_w + 4, (k // per_row) * cell_h + 4
        image = Image.open(io.BytesIO(blob.read())).convert("RGB")
        image.thumbnail((THUMB, THUMB))
        sheet.paste(image, (x + (THUMB - image.width) // 2, y + (THUMB - image.height) // 2))
        caption = textwrap.wrap(row[cols.CAPTION] or "(no caption)", chars)[:TEXT_LINES]
        score = row[cols.AESTHETIC]
        caption.append(f"{row[cols.SOURCE]}  aesthetic {'-' if score is None else f'{score:.2f}'}")
        for i, text in enumerate(caption):
            draw.text((x, y + THUMB + 2 + i * line_h), text, fill="black", font=font)
    fs.write_bytes(path, _png(sheet))
    return len(rows)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def inspect_table(uri: str, sheet: str | None, count: int = 24, seed: int = 0, say=print) -> None:
    """Print what the table holds; write the contact sheet to `sheet` (None: none)."""
    ds = open_images_table(uri, "TABLE")
    for line in describe(ds, uri):
        say(line)
    if sheet and count > 0:
        shown = contact_sheet(ds, count, seed, sheet)
        say(f"contact sheet: {sheet} ({shown} random rows, seed {seed})")
