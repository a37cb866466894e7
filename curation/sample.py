"""The built-in sample: LAION-shaped metadata whose URLs point at images served on 127.0.0.1.

Its good rows are the colour photographs scikit-image ships (no network: they are in the package), scaled
up so that their short side passes the sample's 512-px size filter; its other rows are one of each common
failure (a low aesthetic score, small metadata, a 404, an HTML page, an image smaller than its metadata says).

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


# scikit-image's data photographs (name, caption): real pictures, shipped with the package.
PHOTOS = [("astronaut", "an astronaut in front of a flag"), ("coffee", "a cup of coffee on a saucer"),
          ("chelsea", "a ginger cat looking to the side"), ("rocket", "a rocket on its launch pad"),
          ("immunohistochemistry", "stained tissue under a microscope"),
          ("hubble_deep_field", "galaxies in the deep field"), ("retina", "the back of a human eye"),
          ("camera", "a man with a camera on a tripod")]
SHORT_SIDE = 512  # the sample's --min-size


def photo(name: str) -> Image.Image:
    """One of scikit-image's photographs as RGB, scaled up (bicubic) to a short side of at least SHORT_SIDE."""
    from skimage import data

    pixels = getattr(data, name)()
    if pixels.ndim == 2:  # the greyscale ones
        pixels = np.stack([pixels] * 3, -1)
    image = Image.fromarray(pixels[..., :3])
    scale = max(1.0, SHORT_SIDE / min(image.size))
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)


def sample_rows() -> list[dict]:
    """Rows of the built-in sample: the photographs, plus one of each common failure."""
    rows = []
    for i, (name, caption) in enumerate(PHOTOS):
        w, h = photo(name).size  # the metadata says the size served
        rows.append({"name": f"{name}.jpg", "photo": name, "w": w, "h": h, "aesthetic": 5.5 + (i % 4) * 0.3,
                     "caption": caption, "serve": "photo"})
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
        if row["serve"] == "photo":
            routes[path] = Route(encode(photo(row["photo"])))
        elif row["serve"] == "image":
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
