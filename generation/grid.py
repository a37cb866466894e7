"""Image grids: rows of equally sized uint8 images → one PNG (the same pixels give the same bytes).

Small cells (a 16-px `pixels` run) are scaled up by a whole factor (nearest) to at least MIN_CELL pixels, so
that a grid is visible as it is; a header band can name the columns (input, reconstruction, seed ...) and a
title band above each row can carry its prompt.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PAD = 2
BACKGROUND = 255
MIN_CELL = 64  # cells smaller than this are scaled up by a whole factor
LABEL = 12  # height of a label band
INK = (40, 40, 40)


def scale_of(side: int) -> int:
    """The whole factor cells of `side` pixels are scaled up by."""
    return max(1, math.ceil(MIN_CELL / side))


def origin(row: int, col: int, cell: int, header: bool = False, titles: bool = False,
           width: int | None = None) -> tuple[int, int]:
    """(top, left) of cell (row, col) in a grid of cells `cell` pixels high and `width` (default: as high)
    wide, after scaling."""
    top = PAD + (LABEL if header else 0) + row * (cell + PAD + (LABEL if titles else 0)) + (LABEL if titles else 0)
    return top, PAD + col * ((cell if width is None else width) + PAD)


def grid(rows: list[list[np.ndarray]], header: list[str] | None = None,
         titles: list[str] | None = None) -> Image.Image:
    """rows[r][c]: (H, W, 3) uint8, all the same size → one image with PAD pixels between the cells, column
    labels above the first row (`header`) and a label above each row (`titles`), cut to fit."""
    k = scale_of(min(rows[0][0].shape[:2]))
    h, w = rows[0][0].shape[0] * k, rows[0][0].shape[1] * k
    cols = max(len(r) for r in rows)
    bottom, _ = origin(len(rows), 0, h, bool(header), bool(titles))
    height = bottom - (LABEL if titles else 0)
    out = np.full((height, cols * (w + PAD) + PAD, 3), BACKGROUND, np.uint8)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            top, left = origin(i, j, h, bool(header), bool(titles), w)
            out[top:top + h, left:left + w] = cell.repeat(k, 0).repeat(k, 1) if k > 1 else cell
    image = Image.fromarray(out)
    if header or titles:
        draw, font = ImageDraw.Draw(image), ImageFont.load_default()
        for j, text in enumerate(header or []):
            _label(draw, font, text, origin(0, j, h, True, bool(titles), w)[1], PAD - 1, w)
        for i, text in enumerate(titles or []):
            top, _ = origin(i, 0, h, bool(header), True, w)
            _label(draw, font, text, PAD, top - LABEL, image.width - 2 * PAD)
    return image


def _label(draw, font, text: str, left: int, top: int, width: int) -> None:
    """`text` at (left, top), cut with "…" to `width` pixels."""
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 1 else ""
    draw.text((left, top), text, fill=INK, font=font)


def sample_labels(num: int, seed: int) -> list[str]:
    """Column labels of `num` samples drawn with one seed."""
    return [f"seed {seed} #{k + 1}" for k in range(num)]


def save_grid(rows: list[list[np.ndarray]], path: str, header: list[str] | None = None,
              titles: list[str] | None = None) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid(rows, header, titles).save(path, format="PNG")
    return path
