"""The built-in sample: LAION-shaped metadata whose URLs point at images served on 127.0.0.1.

Used by `lumos-curate sample` (the README's first command) so that the whole chain runs offline, and by
the tests, which serve their own fixtures through the same `ImageServer`.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

DEFAULT_PORT = 48765


@dataclass(frozen=True)
class Route:
    body: bytes
    content_type: str = "image/jpeg"
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}
    hits: Counter
    delay: float = 0.0

    def do_GET(self):  # noqa: N802 - the http.server API
        self.hits[self.path] += 1  # the request log: tests check what was (not) fetched
        if self.delay:
            time.sleep(self.delay)
        route = self.routes.get(self.path, Route(b"not found", "text/plain", 404))
        self.send_response(route.status)
        self.send_header("Content-Type", route.content_type)
        for name, value in route.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(route.body)))
        self.end_headers()
        self.wfile.write(route.body)

    def log_message(self, *args):  # keep test and demo output quiet
        pass


@dataclass
class Served:
    base_url: str
    hits: Counter  # requests per path, for tests that check what was (not) fetched (again)


@contextmanager
def serve(routes: dict[str, Route], port: int = 0, delay: float = 0.0, host: str = "127.0.0.1"):
    """Serve `routes` ({"/path": Route}) on `host` (a loopback address), waiting `delay` seconds before each
    answer.

    Yields a `Served`; port 0 picks a free port, and a busy fixed port falls back to a free one.
    """
    handler = type("Handler", (_Handler,), {"routes": dict(routes), "hits": Counter(), "delay": delay})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError:
        server = ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(f"http://{host}:{server.server_address[1]}", handler.hits)
    finally:
        server.shutdown()
        server.server_close()


def synthetic_image(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """A deterministic picture: a colour gradient with a few shapes, so resizes and crops are visible."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = ((x / max(width - 1, 1) + y / max(height - 1, 1)) / 2)[..., None]
    img = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7)
        r = rng.uniform(0.1, 0.3) * min(width, height)
        draw.ellipse([x0, y0, x0 + r, y0 + r], fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
    return img.convert(mode) if mode != "RGB" else img


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, quality=90) if fmt == "JPEG" else img.save(out, fmt)
    return out.getvalue()


def sample_rows(count: int = 40) -> list[dict]:
    """Rows of the built-in sample: mostly good images, plus one of each common failure."""
    rows = []
    sizes = [(640, 512), (512, 640), (768, 512), (600, 600), (800, 600)]
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        rows.append({"name": f"img{i:03d}.jpg", "w": w, "h": h, "aesthetic": 5.0 + (i % 10) * 0.3,
                     "caption": f"sample picture {i}", "serve": "image"})
    rows += [
        {"name": "low_aesthetic.jpg", "w": 640, "h": 512, "aesthetic": 4.2, "caption": "dull", "serve": "image"},
        {"name": "tiny_meta.jpg", "w": 320, "h": 240, "aesthetic": 6.0, "caption": "small", "serve": "image"},
        {"name": "gone.jpg", "w": 640, "h": 512, "aesthetic": 6.0, "caption": "404", "serve": "missing"},
        {"name": "page.jpg", "w": 640, "h": 512, "aesthetic": 6.0, "caption": "html", "serve": "html"},
        {"name": "liar.jpg", "w": 1024, "h": 768, "aesthetic": 6.0, "caption": None, "serve": "small"},
    ]
    return rows


def sample_routes(rows: list[dict]) -> dict[str, Route]:
    """What the sample's server answers for each row's path (absent paths answer 404)."""
    routes: dict[str, Route] = {}
    for i, row in enumerate(rows):
        path = f"/{row['name']}"
        if row["serve"] == "image":
            routes[path] = Route(encode(synthetic_image(row["w"], row["h"], seed=i)))
        elif row["serve"] == "html":
            routes[path] = Route(b"<html><body>moved</body></html>", "image/jpeg")
        elif row["serve"] == "small":
            routes[path] = Route(encode(synthetic_image(200, 150, seed=i)))
    return routes


def write_sample_metadata(rows: list[dict], base_url: str, folder: str) -> str:
    """Write the sample's metadata as one parquet file with improved-aesthetics LAION columns."""
    os.makedirs(folder, exist_ok=True)
    table = pa.table(
        {
            "URL": [f"{base_url}/{r['name']}" for r in rows],
            "TEXT": [r["caption"] for r in rows],
            "WIDTH": pa.array([r["w"] for r in rows], pa.int64()),
            "HEIGHT": pa.array([r["h"] for r in rows], pa.int64()),
            "similarity": pa.array([0.3] * len(rows), pa.float64()),
            "punsafe": pa.array([0.01] * len(rows), pa.float32()),
            "pwatermark": pa.array([0.1] * len(rows), pa.float32()),
            "AESTHETIC_SCORE": pa.array([r["aesthetic"] for r in rows], pa.float32()),
        }
    )
    path = os.path.join(folder, "laion-sample.parquet")
    pq.write_table(table, path)
    return path
