"""FID: Inception-v3 pool features of two image sets, their Gaussian statistics, the Fréchet distance.

The network is pytorch-fid's `InceptionV3` (the TF FID Inception with its patched blocks, 2048-d pool
features, input resized to 299 bilinearly) with its weights file pt_inception-2015-12-05-6726825d.pth,
read from --inception PATH or fetched from pytorch-fid's release URL through the torch hub cache. So the
features are pytorch-fid's; torchmetrics and torch-fidelity use the same TF weights with their own resizing,
which moves FID by a few hundredths.

Every image is first center-cropped to a square and resized to `resolution` (bicubic), the way the VAE saw
the training images, so that generated and reference sets are compared at the same size.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from lumos.floor.errors import UserError

DIMS = 2048
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
HUB = "pytorch-fid:pt_inception-2015-12-05-6726825d.pth"


# --- the distance ---
def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features → mean (D,) and covariance (D, D), float64 (np.cov's N − 1 normalisation)."""
    f = np.asarray(features, np.float64)
    if len(f) < 2:
        raise UserError(f"FID needs at least 2 images, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^½, with tr (Σ1 Σ2)^½ = Σ √λ(A Σ2 A), A = Σ1^½: the eigenvalues
    of a symmetric PSD matrix (no general matrix square root, no complex parts to discard), in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root = (v * np.sqrt(_resolvable(w))) @ v.T  # Σ1^½
    inner = root @ s2 @ root
    trace_sqrt = np.sqrt(_resolvable(np.linalg.eigvalsh((inner + inner.T) / 2))).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def _resolvable(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues below numpy's rank tolerance (max · n · float64 eps) set to 0: they are rounding noise (a
    covariance of fewer images than dimensions has many), and their square roots would add up."""
    tol = max(float(eigenvalues.max()), 0.0) * len(eigenvalues) * np.finfo(np.float64).eps
    return np.where(eigenvalues > tol, eigenvalues, 0.0)


# --- the network ---
class Inception:
    """pytorch-fid's InceptionV3 pool features; `weights` a local .pth (else pytorch-fid's URL via the hub cache)."""

    def __init__(self, weights: str | None = None, device: torch.device | str = "cpu"):
        from pytorch_fid import inception as pf

        self.device = torch.device(device)
        if weights:
            try:
                state = torch.load(weights, map_location="cpu", weights_only=True)
                with open(weights, "rb") as f:
                    self.id = "sha256:" + hashlib.sha256(f.read()).hexdigest()[:16]
            except Exception as err:  # noqa: BLE001 - missing, not a torch file, pickled objects: one answer
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(f"--inception {weights}: cannot read it as a weights file ({first})") from None
        else:
            try:
                state = pf.load_state_dict_from_url(pf.FID_WEIGHTS_URL, progress=True)
            except Exception as err:  # noqa: BLE001 - offline, proxy, ...: the same advice
                raise UserError(f"cannot fetch the FID Inception weights ({pf.FID_WEIGHTS_URL}): "
                                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}; download "
                                "that file and pass --inception PATH") from None
            self.id = HUB
        # pytorch-fid's constructor only downloads its weights: hand it the state dict we read instead.
        fetch = pf.load_state_dict_from_url
        pf.load_state_dict_from_url = lambda *_a, **_k: state
        try:
            self.net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[DIMS]])
        except RuntimeError as err:
            raise UserError(f"--inception {weights}: not the FID Inception's weights "
                            f"({str(err).splitlines()[0]})") from None
        finally:
            pf.load_state_dict_from_url = fetch
        self.net = self.net.eval().to(self.device)

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 → (N, 2048) float64."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)
        return self.net(x.to(self.device))[0].flatten(1).double().cpu().numpy()


# --- image sets ---
def square(image: Image.Image, resolution: int) -> np.ndarray:
    """Center square, resized to resolution (bicubic) → (R, R, 3) uint8."""
    from lumos.pipeline.encoders.base import center_square

    image = center_square(image.convert("RGB"))
    if image.width != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    return np.asarray(image, np.uint8)


@dataclass
class ImageSet:
    """A folder of image files (recursive, sorted) or the `image` column of a Lance images table."""

    path: str

    def __post_init__(self):
        from lumos.floor.lance_io import table_exists

        self.table = table_exists(self.path)
        if not self.table:
            if not os.path.isdir(self.path):
                raise UserError(f"{self.path}: neither a folder of images nor a Lance images table")
            self.files = sorted(os.path.join(d, f) for d, _, names in os.walk(self.path) for f in names
                                if f.lower().endswith(IMAGE_SUFFIXES))
            if not self.files:
                raise UserError(f"{self.path}: no image files ({', '.join(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return self.dataset().count_rows() if self.table else len(self.files)

    def dataset(self):
        import lance

        return lance.dataset(self.path)

    def fingerprint(self) -> dict:
        """What identifies the set's content: a table's version (and its time), or each file's size and mtime."""
        if self.table:
            ds = self.dataset()
            stamp = next((v["timestamp"] for v in ds.versions() if v["version"] == ds.version), None)
            return {"table": os.path.abspath(self.path), "version": ds.version, "timestamp": str(stamp)}
        digest = hashlib.sha256()
        for f in self.files:
            st = os.stat(f)
            digest.update(f"{os.path.relpath(f, self.path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"folder": os.path.abspath(self.path), "files": len(self.files), "digest": digest.hexdigest()}

    def batches(self, count: int, batch: int, resolution: int):
        """The first `count` images as (n, R, R, 3) uint8 batches."""
        from lumos.schemas import images as cols

        ds = self.dataset() if self.table else None
        for start in range(0, count, batch):
            index = list(range(start, min(start + batch, count)))
            if ds is not None:
                raw = [io.BytesIO(b.read()) for b in ds.take_blobs(cols.IMAGE, indices=index)]
            else:
                raw = [self.files[i] for i in index]
            out = []
            for r in raw:
                with Image.open(r) as im:
                    out.append(square(im, resolution))
            yield np.stack(out)


def set_features(images: ImageSet, inception: Inception, count: int, resolution: int, batch: int = 50,
                 desc: str = "") -> np.ndarray:
    from tqdm import tqdm

    parts = [inception.features(b) for b in tqdm(images.batches(count, batch, resolution), desc=desc,
                                                  total=-(-count // batch), unit="batch", dynamic_ncols=True)]
    return np.concatenate(parts)


# --- cached statistics ---
def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lumos", "fid")


def cached_statistics(images: ImageSet, inception: Inception, count: int, resolution: int, cache_dir: str,
                      batch: int = 50) -> tuple[np.ndarray, np.ndarray, bool]:
    """(μ, Σ, cache hit) of the first `count` images of a set. The cache key holds the set's fingerprint, the
    Inception weights, the resolution and the count: a changed reference is recomputed, never reused."""
    key = {"set": images.fingerprint(), "inception": inception.id, "resolution": resolution, "count": count}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = os.path.join(cache_dir, f"stats-{digest}.npz")
    if os.path.exists(path):
        with np.load(path) as saved:
            return saved["mu"], saved["sigma"], True
    mu, sigma = statistics(set_features(images, inception, count, resolution, batch, desc="reference"))
    store_statistics(cache_dir, path, mu, sigma, key)
    return mu, sigma, False


CACHE_WAIT_S = 30.0  # a write holds the cache's lock for milliseconds: longer means a holder we cannot see
TMP_SUFFIX = ".tmp.npz"


def store_statistics(cache_dir: str, path: str, mu, sigma, key: dict) -> None:
    """Write one statistics file under the cache folder's lock, held for the write only (evaluations share the
    cache); the holder first removes what a killed writer left. A lock that stays held is waited for, then the
    file is left uncached (the result does not depend on it) with one line on stderr."""
    import sys
    import time

    from lumos.floor.output_lock import OutputLocked, output_lock

    deadline = time.monotonic() + CACHE_WAIT_S
    while True:
        try:
            with output_lock(cache_dir, "lumos-eval fid (statistics cache)"):
                for name in os.listdir(cache_dir):
                    if name.endswith(TMP_SUFFIX):
                        os.remove(os.path.join(cache_dir, name))
                tmp = path[: -len(".npz")] + TMP_SUFFIX
                np.savez(tmp, mu=mu, sigma=sigma, key=json.dumps(key, sort_keys=True))
                os.replace(tmp, path)
            return
        except OutputLocked as err:
            if time.monotonic() > deadline:
                print(f"warning: reference statistics not cached: {err}", file=sys.stderr)
                return
            time.sleep(0.5)
