"""Stream cached features from the Lance features table: only the columns a run needs, in a shuffled order
that is a function of (seed, epoch) alone, split across DDP ranks and DataLoader workers.

Which rows a run can use is read once from the small columns alone (the VAE's and an image condition's
`_ok`, a text condition's length; never a payload): rank 0 writes their positions to the run folder
(`positions-v{table version}-{key}.npy`), and every process, DataLoader workers included, maps that file
read-only, so a node's page cache holds one copy. The table is read at that version from then on.

Each epoch is cut into global steps of `batch × world` rows; rank r takes rows r, r + world, ... of each
step, so every rank runs the same number of steps (DDP would hang otherwise) and every usable row is seen
exactly once an epoch. An epoch's order is a seeded bijection on [0, n) (a 4-round Feistel network with
cycle walking, keyed by (seed, epoch)), computed for a step's indices only: no permutation of n rows is
ever held. In the last step of an epoch a rank left with no row gets one row of weight 0 (it keeps the
ranks in step and adds nothing to the loss). DataLoader worker w of W produces steps w, w + W, ... and the
DataLoader hands them out in step order, so the order does not depend on the number of workers, and
resuming at step k only needs k.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import mmap
import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lumos.floor.errors import UserError
from lumos.schemas import features
from lumos.schemas.images import ID

POSITIONS_PREFIX = "positions-v"  # + table version + "-" + key + ".npy", in the run folder
_PACK = 1 << 23  # rows packed into the usable-rows bitmap at a time (a multiple of 8)


@dataclass(frozen=True)
class FeatureColumns:
    """The columns a run reads (the VAE posterior and the condition: CLS vectors, or T5 tokens + lengths), and
    the small ones that say which rows it can use: the VAE's `_ok`, an image condition's `_ok` (true), a
    text condition's length (> 0). Left out, an `_ok` column is named after the payload beside it
    (`{prefix}_mean` → `{prefix}_ok`, `{prefix}_cls` → `{prefix}_ok`), as schemas/features.py names them."""

    mean: str
    std: str
    cond: str
    length: str | None = None  # text conditions only
    latents_ok: str | None = None
    cond_ok: str | None = None  # image conditions only
    # --caption mix: the long caption's tokens and length beside the short ones, and the chance of taking it
    long_cond: str | None = None
    long_length: str | None = None
    long_share: float = 0.0
    # bucketed latents (lumos-encode --buckets): each row's bin, and every bin's latent shape (C, h, w)
    bucket: str | None = None
    bucket_shapes: tuple | None = None

    def __post_init__(self):
        if self.latents_ok is None:
            object.__setattr__(self, "latents_ok", features.ok_column(self.mean.removesuffix("_mean")))
        if self.length is None and self.cond_ok is None:
            object.__setattr__(self, "cond_ok", features.ok_column(self.cond.removesuffix("_cls")))

    def names(self) -> list[str]:
        """The columns a batch reads (under --caption mix, the tokens are read per row apart: `load`)."""
        latents = [self.mean, self.std] + ([self.bucket] if self.bucket else [])
        if self.long_cond:
            return [*latents, self.length, self.long_length]
        return [*latents, self.cond] + ([self.length] if self.length else [])

    def usable(self) -> list[str]:
        """The small columns that tell whether a row is usable (under mix: either caption will do)."""
        return [self.latents_ok, self.length if self.length else self.cond_ok] + \
            ([self.long_length] if self.long_length else [])


def _usable_bits(ds, columns: FeatureColumns) -> tuple[np.ndarray, int]:
    """(one bit a row in table order, np.packbits-style, set where the row is usable; the number of rows),
    from the small columns alone: ~1 bit a row of memory, whatever the table holds."""
    import pyarrow.compute as pc

    missing = [c for c in columns.usable() if c not in ds.schema.names]
    if missing:
        raise UserError(f"--data {ds.uri} has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''} "
                        "(written by an older lumos-encode); "
                        "re-encode it with this version's lumos-encode")
    if ds.stats.dataset_stats()["num_deleted_rows"]:
        raise UserError(f"{ds.uri} has deleted rows; compact it (lance optimize) before training")
    total = ds.count_rows()
    bits = np.zeros((total + 7) // 8, np.uint8)
    buffer, filled, packed, seen = np.empty(_PACK, bool), 0, 0, 0
    lengths = {columns.length, columns.long_length} - {None}
    for batch in ds.to_batches(columns=columns.usable(), scan_in_order=True):
        usable, caption = np.ones(batch.num_rows, bool), np.zeros(batch.num_rows, bool)
        for name in columns.usable():
            column = batch.column(name)
            ok = pc.fill_null(pc.greater(column, 0) if name in lengths else column, False)
            if name in lengths:  # a text condition: a row with one caption (or either, under mix) is usable
                caption |= ok.to_numpy(zero_copy_only=False)
            else:
                usable &= ok.to_numpy(zero_copy_only=False)
        if lengths:
            usable &= caption
        seen += len(usable)
        while len(usable):
            n = min(len(usable), _PACK - filled)
            buffer[filled:filled + n], usable, filled = usable[:n], usable[n:], filled + n
            if filled == _PACK:
                bits[packed:packed + _PACK // 8], packed, filled = np.packbits(buffer), packed + _PACK // 8, 0
    tail = np.packbits(buffer[:filled])
    bits[packed:packed + len(tail)] = tail
    if seen != total:
        raise UserError(f"{ds.uri}: scanned {seen} rows of {total}; the table changed while it was read")
    return bits, total


def _positions_in(bits: np.ndarray):
    """The set bits' positions, int64, a few million rows at a time."""
    for start in range(0, len(bits), _PACK // 8):
        yield np.flatnonzero(np.unpackbits(bits[start:start + _PACK // 8])).astype(np.int64) + start * 8


def valid_positions(data, columns: FeatureColumns, version: int | None = None) -> tuple[np.ndarray, int]:
    """Positions (for `take`) of the rows a run can use, in memory, and how many are not, from `data` (a URI,
    or an open LanceDataset): for tools and tests (the trainer maps the positions file, see `positions_file`)."""
    import lance

    ds = lance.dataset(data, version=version) if isinstance(data, str) else data
    bits, total = _usable_bits(ds, columns)
    chunks = list(_positions_in(bits))
    positions = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
    return positions, total - len(positions)


def _write_positions(bits: np.ndarray, path: str) -> None:
    """The usable positions as a .npy file, written without holding them (count first, then chunks), then
    renamed into place: a reader sees the whole file or none."""
    count = sum(int(np.unpackbits(bits[s:s + _PACK // 8]).sum()) for s in range(0, len(bits), _PACK // 8))
    with positions_writer(path, count) as f:
        for chunk in _positions_in(bits):
            f.write(chunk.astype("<i8", copy=False).tobytes())


@contextlib.contextmanager
def positions_writer(path: str, count: int):
    """A positions file of `count` int64 being written: the open file, just past the .npy header; flushed,
    synced and renamed into place at the end, so that a reader sees the whole file or none."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<i8")),
                                                 "fortran_order": False, "shape": (count,)})
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _version_stamp(ds) -> str:
    """When the open version was committed: with the version number, tells this table from one made anew."""
    if hasattr(ds, "get_version"):
        return str(ds.get_version()["timestamp"])
    return next(str(v["timestamp"]) for v in ds.versions() if v["version"] == ds.version)


def positions_file(uri: str, columns: FeatureColumns, folder: str, version: int | None = None) -> tuple[str, int, int]:
    """Rank 0, once a run: (the positions file in `folder`, the table version it holds positions of, how many
    rows are not usable). A file already there for this version and these columns (a resumed run) is reused;
    positions files of other versions are removed. `version` None: the latest."""
    import lance

    ds = lance.dataset(uri, version=version)
    key = hashlib.sha256(json.dumps([columns.usable(), ds.version, _version_stamp(ds)]).encode()).hexdigest()[:16]
    name = f"{POSITIONS_PREFIX}{ds.version}-{key}.npy"
    path = os.path.join(folder, name)
    try:
        count = len(open_positions(path))
        if columns.bucket:
            np.load(counts_path(path))
    except (OSError, ValueError):  # absent (or, against all odds, unreadable): computed now
        os.makedirs(folder, exist_ok=True)
        if columns.bucket:  # grouped by bucket, with the rows per bucket beside
            from lumos.trainer.buckets import write_grouped_positions

            counts = write_grouped_positions(ds, _usable_bits(ds, columns)[0], columns.bucket,
                                             len(columns.bucket_shapes), path)
            np.save(counts_path(path), counts)
        else:
            _write_positions(_usable_bits(ds, columns)[0], path)
        count = len(open_positions(path))
        for other in os.listdir(folder):
            if other.startswith(POSITIONS_PREFIX) and other not in (name, os.path.basename(counts_path(path))):
                os.remove(os.path.join(folder, other))
    return path, ds.version, ds.count_rows() - count


def counts_path(path: str) -> str:
    """Bucketed runs: the rows per bucket of a positions file grouped by bucket, beside it."""
    return path[:-len(".npy")] + ".counts.npy"


def open_positions(path: str) -> np.ndarray:
    """The positions file, mapped read-only (the page cache holds one copy for every process of a node)."""
    positions = np.load(path, mmap_mode="r")
    if positions.ndim != 1 or positions.dtype != np.int64:
        raise ValueError(f"{path}: not a positions file")
    return positions


_ROUNDS = 4
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@functools.lru_cache(maxsize=8)
def _keys(seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).integers(0, 2**64 - 1, size=_ROUNDS, dtype=np.uint64,
                                                         endpoint=True)


def _round(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """A keyed 64-bit mix (splitmix64's finaliser): the Feistel round function."""
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _feistel(x: np.ndarray, bits: int, keys: np.ndarray) -> np.ndarray:
    """A bijection on [0, 2^bits): unbalanced Feistel rounds on (high a bits, low b bits); each round maps
    (L, R) to (R, L ^ F(R)), swapping the halves' widths, so an even number of rounds ends as it started."""
    a, b = bits // 2, bits - bits // 2
    left, right = x >> np.uint64(b), x & np.uint64((1 << b) - 1)
    wl, wr = a, b
    for key in keys:
        left, right = right, left ^ (_round(right, key) & np.uint64((1 << wl) - 1))
        wl, wr = wr, wl
    return (left << np.uint64(wr)) | right


def shuffled(indices: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """Where `indices` (in [0, n)) go in the order of (seed, epoch): a bijection on [0, n), by cycle walking a
    Feistel bijection on [0, 2^bits) with 2^bits < 2n (the walk takes < 2 steps on average)."""
    bits = max(2, (n - 1).bit_length())
    keys = _keys(seed, epoch)
    x = _feistel(np.asarray(indices, np.uint64), bits, keys)
    outside = np.flatnonzero(x >= n)
    while len(outside):
        x[outside] = _feistel(x[outside], bits, keys)
        outside = outside[x[outside] >= n]
    return x.astype(np.int64)


def mapped_state(state: dict, key: str) -> dict:
    """An order's state for a spawned worker: its positions, when the whole mapped positions file, by path."""
    state, p = dict(state), state[key]
    if isinstance(p, np.memmap) and isinstance(p.base, mmap.mmap):  # the whole file, as np.load mapped it
        state[key] = ("file", p.filename)
    return state


def unmapped_state(state: dict, key: str) -> dict:
    if isinstance(state[key], tuple):
        state = {**state, key: open_positions(state[key][1])}
    return state


class EpochOrder:
    """Which rows rank `rank` of `world` trains on at (epoch, step): `positions` (an array, or the mapped
    positions file) less `skip`, sorted indices into it of rows not to train on (the held-back rows)."""

    def __init__(self, positions: np.ndarray, batch_size: int, world: int = 1, rank: int = 0, seed: int = 0,
                 skip: np.ndarray | None = None):
        self.positions, self.batch_size, self.world, self.rank, self.seed = positions, batch_size, world, rank, seed
        self.skip = np.zeros(0, np.int64) if skip is None else np.asarray(skip, np.int64)
        self._before = self.skip - np.arange(len(self.skip))  # kept rows before each skipped one
        self.count = len(positions) - len(self.skip)  # rows trained on an epoch

    def __getstate__(self):  # sent to spawned DataLoader workers: a mapped file by its path, not its rows
        return mapped_state(self.__dict__, "positions")

    def __setstate__(self, state):
        self.__dict__.update(unmapped_state(state, "positions"))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.count / (self.batch_size * self.world))

    def at(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        """The positions at these places of the epoch's order."""
        kept = shuffled(indices, self.count, self.seed, epoch)
        if len(self.skip):
            kept = kept + np.searchsorted(self._before, kept, side="right")
        return np.asarray(self.positions[kept], np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        """The whole epoch's order (n rows): for tests and tools only; training asks `rows`."""
        return self.at(epoch, np.arange(self.count))

    def rows(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, weights) of this rank's rows at this step, positions sorted (faster takes)."""
        size = self.batch_size * self.world
        indices = np.arange(step * size + self.rank, min((step + 1) * size, self.count), self.world)
        if len(indices) == 0:
            return self.at(epoch, np.zeros(1, np.int64)), np.zeros(1, np.float32)
        return np.sort(self.at(epoch, indices)), np.ones(len(indices), np.float32)


class FeatureStream(IterableDataset):
    """Batches from global step `start` on, forever (the trainer stops at --steps). Each process (the main
    one, or each DataLoader worker) loads its next batches with `threads` concurrent Lance takes, and yields
    them in step order."""

    threads = 2  # a take spends its time in Lance's Rust code, without the GIL: two overlap on two cores

    def __init__(self, uri: str, columns: FeatureColumns, order: EpochOrder, start: int = 0, with_ids: bool = False,
                 version: int | None = None):
        self.uri, self.columns, self.order, self.start, self.with_ids = uri, columns, order, start, with_ids
        self.version = version  # the table version the order's positions are of (None: the latest)

    def __iter__(self):
        import lance

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        ds = lance.dataset(self.uri, version=self.version)  # opened in the worker: Lance is not fork-safe (workers are spawned)
        step = self.start + worker
        with ThreadPoolExecutor(self.threads) as pool:
            pending: deque = deque()
            while True:
                while len(pending) < 2 * self.threads:
                    pending.append(pool.submit(self.load, ds, step, *divmod(step, self.order.steps_per_epoch)))
                    step += workers
                yield pending.popleft().result()

    def load(self, ds, step: int, epoch: int, in_epoch: int) -> dict:
        positions, weight = self.order.rows(epoch, in_epoch)
        table = ds.take(positions, columns=[ID, *self.columns.names()] if self.with_ids else self.columns.names())
        batch = {"step": step, "epoch": epoch, "weight": torch.from_numpy(weight),
                 "mean": read_latents(table, self.columns.mean, self.columns, ds),
                 "std": read_latents(table, self.columns.std, self.columns, ds)}
        if self.with_ids:
            batch["ids"] = table[ID].to_pylist()
        if self.columns.length is None:  # image features: a CLS vector (one token) or a fixed token set
            batch["cond"] = as_tokens(read_fixed(table, self.columns.cond, ds))  # (N, T, C)
        elif self.columns.long_cond:
            long = take_long(table, self.columns, positions, self.order.seed, epoch)
            batch["cond"], batch["mask"] = read_captions(ds, positions, long, self.columns)
        else:
            batch["cond"], batch["mask"] = read_padded(table, self.columns.cond, self.columns.length, ds)
        return batch


def take_long(table, columns: FeatureColumns, positions: np.ndarray, seed: int, epoch: int | None) -> np.ndarray:
    """--caption mix: which rows take their long caption. Each row draws by (seed, epoch, its position) alone
    (the same on any rank, worker or resume), long with chance `long_share`; a row lacking one caption takes
    the other. epoch None: no draw, the short caption where there is one (the held-back grid's rows)."""
    short = table[columns.length].to_numpy(zero_copy_only=False) > 0
    has_long = table[columns.long_length].to_numpy(zero_copy_only=False) > 0
    if epoch is None:
        return ~short
    key = _keys(seed, epoch)[0] ^ np.uint64(0x6C6F6E67)  # "long": apart from the order's own keys
    draw = (_round(np.asarray(positions, np.uint64), key) >> np.uint64(11)).astype(np.float64) / 2.0 ** 53
    return np.where(short & has_long, draw < columns.long_share, has_long)


def read_captions(ds, positions: np.ndarray, long: np.ndarray, columns: FeatureColumns):
    """The tokens of each row's chosen caption, (N, L, C) padded and (N, L) mask: two takes, each of the
    rows that use that caption (a row's other caption is never read)."""
    parts = []
    for use, cond, length in ((~long, columns.cond, columns.length), (long, columns.long_cond, columns.long_length)):
        if use.any():
            parts.append((np.flatnonzero(use), *read_padded(ds.take(positions[use], columns=[cond, length]), cond,
                                                            length, ds)))
    longest = max(p[1].shape[1] for p in parts)
    out = torch.zeros(len(positions), longest, parts[0][1].shape[2], dtype=torch.float16)
    mask = torch.zeros(len(positions), longest, dtype=torch.int64)
    for rows, values, part_mask in parts:
        out[rows, :values.shape[1]], mask[rows, :values.shape[1]] = values, part_mask
    return out, mask


def read_fixed(table, name: str, ds, shape: tuple | None = None) -> torch.Tensor:
    """A tensor column as (N, *shape) fp16; `shape` None: the field's (bucketed latents pass their bucket's)."""
    shape = shape or features.shape_of(ds.schema.field(name))
    values = table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    with warnings.catch_warnings():  # read-only Arrow memory, wrapped without a copy: the trainer only reads it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(values.reshape(table.num_rows, *shape))  # fp16


def read_latents(table, name: str, columns: FeatureColumns, ds) -> torch.Tensor:
    """A latents column as (N, C, h, w) fp16: fixed-size, or bucketed (every row of a batch from one bucket)."""
    if not columns.bucket:
        return read_fixed(table, name, ds)
    buckets = np.unique(table[columns.bucket].to_numpy(zero_copy_only=False))
    if len(buckets) != 1:
        raise ValueError(f"a batch of bucketed latents spans buckets {buckets.tolist()}")
    return read_fixed(table, name, ds, tuple(columns.bucket_shapes[int(buckets[0])]))


def as_tokens(cond: torch.Tensor) -> torch.Tensor:
    """Image features (N, C) of a CLS vector or (N, T, C) of a token set → (N, T, C) tokens (T = 1 for CLS)."""
    return cond[:, None] if cond.dim() == 2 else cond


def read_padded(table, name: str, length: str, ds) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length token lists → (N, L, C) padded to the longest row of the batch, and (N, L) mask."""
    dim = features.shape_of(ds.schema.field(name))[-1]
    lengths = table[length].to_numpy(zero_copy_only=False).astype(np.int64)
    values = table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    longest = int(lengths.max())
    out = np.zeros((table.num_rows, longest, dim), np.float16)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for i, n in enumerate(lengths):
        out[i, :n] = values[starts[i]:starts[i] + n]
    mask = (np.arange(longest)[None] < lengths[:, None]).astype(np.int64)
    return torch.from_numpy(out), torch.from_numpy(mask)
