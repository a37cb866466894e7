"""Image grids: rows of equally sized uint8 images → one PNG (the same pixels give the same bytes)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

PAD = 2
BACKGROUND = 255


def grid(rows: list[list[np.ndarray]]) -> Image.Image:
    """rows[r][c]: (H, W, 3) uint8, all the same size → one image with PAD pixels between the cells."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + PAD) + PAD, cols * (w + PAD) + PAD, 3), BACKGROUND, np.uint8)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            top, left = PAD + i * (h + PAD), PAD + j * (w + PAD)
            out[top:top + h, left:left + w] = cell
    return Image.fromarray(out)


def save_grid(rows: list[list[np.ndarray]], path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid(rows).save(path, format="PNG")
    return path
