"""Stream cached features from the Lance features table: only the columns a run needs, in a shuffled order
that is a function of (seed, epoch) alone, split across DDP ranks and DataLoader workers.

Each epoch is cut into global steps of `batch × world` rows; rank r takes rows r, r + world, ... of each
step, so every rank runs the same number of steps (DDP would hang otherwise) and every valid row is seen
exactly once an epoch. In the last step of an epoch a rank left with no row gets one row of weight 0 (it
keeps the ranks in step and adds nothing to the loss). DataLoader worker w of W produces steps w, w + W, ...
and the DataLoader hands them out in step order, so the order does not depend on the number of workers,
and resuming at step k only needs k.
"""

from __future__ import annotations

import math
import threading
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


@dataclass(frozen=True)
class FeatureColumns:
    """The columns a run reads: the VAE posterior and the condition (CLS vectors, or T5 tokens + lengths)."""

    mean: str
    std: str
    cond: str
    length: str | None = None  # text conditions only

    def names(self) -> list[str]:
        return [self.mean, self.std, self.cond] + ([self.length] if self.length else [])


def valid_positions(uri: str, columns: FeatureColumns) -> tuple[np.ndarray, int]:
    """Positions (for `take`) of the rows whose needed columns are all present, and how many are not."""
    import lance

    ds = lance.dataset(uri)
    fragments = ds.get_fragments()
    if any(f.count_rows() != f.physical_rows for f in fragments):
        raise UserError(f"{uri} has deleted rows; compact it (lance optimize) before training")
    base, start = {}, 0
    for f in fragments:
        base[f.fragment_id], start = start, start + f.physical_rows
    needed = [columns.mean, columns.std, columns.cond] + ([columns.length] if columns.length else [])
    scan = ds.to_table(columns=[ID], with_row_address=True, filter=" AND ".join(f"{c} IS NOT NULL" for c in needed))
    addresses = scan["_rowaddr"].to_numpy().astype(np.int64)
    frag_base = np.array([base[int(a >> 32)] for a in addresses], np.int64) if len(addresses) else np.zeros(0, np.int64)
    positions = np.sort(frag_base + (addresses & 0xFFFFFFFF))
    return positions, ds.count_rows() - len(positions)


class EpochOrder:
    """Which rows rank `rank` of `world` trains on at (epoch, step)."""

    def __init__(self, positions: np.ndarray, batch_size: int, world: int = 1, rank: int = 0, seed: int = 0):
        self.positions, self.batch_size, self.world, self.rank, self.seed = positions, batch_size, world, rank, seed
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # loader threads ask for rows concurrently

    def __getstate__(self):  # sent to spawned DataLoader workers: without the lock and the cache
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_lock")}

    def __setstate__(self, state):
        self.__dict__.update(state, _cache={}, _lock=threading.Lock())

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.positions) / (self.batch_size * self.world))

    def permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._cache:
                if len(self._cache) >= 2:  # the current epoch and the next are enough
                    self._cache.pop(min(self._cache))
                rng = np.random.default_rng([self.seed, epoch])
                self._cache[epoch] = self.positions[rng.permutation(len(self.positions))]
            return self._cache[epoch]

    def rows(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, weights) of this rank's rows at this step, positions sorted (faster takes)."""
        size = self.batch_size * self.world
        part = self.permutation(epoch)[step * size:(step + 1) * size][self.rank::self.world]
        if len(part) == 0:
            return self.permutation(epoch)[:1], np.zeros(1, np.float32)
        return np.sort(part), np.ones(len(part), np.float32)


class FeatureStream(IterableDataset):
    """Batches from global step `start` on, forever (the trainer stops at --steps). Each process (the main
    one, or each DataLoader worker) loads its next batches with `threads` concurrent Lance takes, and yields
    them in step order."""

    threads = 2  # a take spends its time in Lance's Rust code, without the GIL: two overlap on two cores

    def __init__(self, uri: str, columns: FeatureColumns, order: EpochOrder, start: int = 0, with_ids: bool = False):
        self.uri, self.columns, self.order, self.start, self.with_ids = uri, columns, order, start, with_ids

    def __iter__(self):
        import lance

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        ds = lance.dataset(self.uri)  # opened in the worker: Lance is not fork-safe (workers are spawned)
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
                 "mean": read_fixed(table, self.columns.mean, ds), "std": read_fixed(table, self.columns.std, ds)}
        if self.with_ids:
            batch["ids"] = table[ID].to_pylist()
        if self.columns.length is None:  # one condition vector a row → one token
            batch["cond"] = read_fixed(table, self.columns.cond, ds)[:, None]  # (N, 1, C)
        else:
            batch["cond"], batch["mask"] = read_padded(table, self.columns.cond, self.columns.length, ds)
        return batch


def read_fixed(table, name: str, ds) -> torch.Tensor:
    shape = features.shape_of(ds.schema.field(name))
    values = table[name].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    with warnings.catch_warnings():  # read-only Arrow memory, wrapped without a copy: the trainer only reads it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(values.reshape(table.num_rows, *shape))  # fp16


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
