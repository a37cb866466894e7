"""`lumos-curate filter`: drop rows of an existing images table by the web path's filters, in place.

The filters are those of `lumos-curate laion|coyo` (curation/web_filter.py), in the same order, with the same
reason names: `--min-size` is `MinSide` on the image's original size (`original_width/height`: what the web
path checks in the metadata and again on the downloaded image), then `--min-aesthetic` is `Threshold` on the
`aesthetic` column. A row is counted under the first filter that drops it, so the counts sum to the rows
dropped. A row with no aesthetic score (NULL, NaN, ±inf) is dropped as `aesthetic_missing`, as on the web
path; a table in which no row has a score is refused (score it first: `lumos-curate score`).

Deletion, not a new table: each fragment that loses rows gets a Lance deletion file (a bitmap of the dropped
rows), and all of them are committed as one Delete version. No data file is read back, rewritten or copied,
so no image byte moves and the table's ids, metadata (the unique-ids marker included) and fragments stay as
they were; readers (`lumos-encode`, the trainer's features) simply no longer see the dropped rows. The space
is reclaimed by `lumos-curate compact` later, which rewrites fragments without their deleted rows. The version
before the filter is not cleaned: a reader that started on it keeps reading it.

How: every fragment is judged in a thread of the driver, scanning only the columns the filters need plus the
row addresses: the filters are evaluated by the Filter classes themselves (never re-expressed as SQL, whose
NaN ordering differs), and the fragment's dropped rows are named to Lance by address. The driver keeps per
fragment only its counts and its new fragment metadata, never a value per row beyond the fragment being
judged. Each new deletion file is checked against the counts before the one commit; a run killed before the
commit leaves the table as it was (at most with deletion files no version reads). The run holds the table's
lock (floor/output_lock.py), as `lumos-curate score` and `compact` do. A re-run with the same thresholds finds
nothing to drop and commits nothing.

Stats go beside the table, as `lumos-encode` writes its own: `images.lance` → `images.filter.stats.json`.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.filters import Filter, MinSide, Threshold, count_reasons, drop_reasons
from lumos.curation.job_dir import JobDir
from lumos.floor import fs
from lumos.floor.errors import UserError
from lumos.floor.lance_io import open_images_table, table_exists
from lumos.floor.options import at_least
from lumos.floor.output_lock import output_lock
from lumos.schemas import images as cols

ROW_ADDRESS = "_rowaddr"  # Lance's own column: (fragment id << 32) | the row's physical offset in its fragment
MISSING_SCORE = f"{cols.AESTHETIC}_missing"  # Threshold's reason for a row without a score
BATCH_ROWS = 64 * 1024  # rows of a fragment scanned at a time (three small columns: ~1 MB)
THREADS = 8  # fragments judged at once (I/O bound; Lance releases the GIL)


@dataclass(frozen=True)
class TableFilterConfig:
    """Thresholds of `lumos-curate filter`; 0 turns a filter off."""

    min_aesthetic: float = 0.0
    min_size: int = 0

    def check(self) -> None:
        at_least("--min-aesthetic", self.min_aesthetic, 0)
        at_least("--min-size", self.min_size, 0)
        if not self.min_aesthetic and not self.min_size:
            raise UserError("nothing to filter: --min-aesthetic and --min-size are both 0; pass one above 0")

    def filters(self) -> list[Filter]:
        """In the web path's order (WebFilterConfig.filters): size first, then the aesthetic score."""
        out: list[Filter] = []
        if self.min_size > 0:
            out.append(MinSide(cols.ORIGINAL_WIDTH, cols.ORIGINAL_HEIGHT, self.min_size))
        if self.min_aesthetic > 0:
            out.append(Threshold(cols.AESTHETIC, self.min_aesthetic, at_least=True))
        return out

    def columns(self) -> list[str]:
        return ([cols.ORIGINAL_WIDTH, cols.ORIGINAL_HEIGHT] if self.min_size > 0 else []) + (
            [cols.AESTHETIC] if self.min_aesthetic > 0 else [])

    def thresholds(self) -> dict:
        return {"min_aesthetic": self.min_aesthetic or None, "min_size": self.min_size or None,
                "size_columns": [cols.ORIGINAL_WIDTH, cols.ORIGINAL_HEIGHT] if self.min_size > 0 else None}

    def predicate(self) -> str:
        """A readable SQL form of the filters, recorded with the Delete commit (the rows deleted are those the
        Filter classes chose, named by address)."""
        parts = []
        if self.min_size > 0:
            parts.append(f"{cols.ORIGINAL_WIDTH} < {self.min_size} OR {cols.ORIGINAL_HEIGHT} < {self.min_size}")
        if self.min_aesthetic > 0:
            parts.append(f"{cols.AESTHETIC} IS NULL OR {cols.AESTHETIC} < {float(self.min_aesthetic)!r}")
        return " OR ".join(parts)


def stats_file(uri: str) -> str:
    """Beside the table: images.lance → images.filter.stats.json."""
    base = uri.rstrip("/")
    return (base[: -len(".lance")] if base.endswith(".lance") else base) + ".filter.stats.json"


@dataclass
class Judged:
    """One fragment's outcome: its live rows, its counts per reason, and when it loses rows its new metadata
    (None with `removed`: it loses them all)."""

    fragment_id: int
    rows: int
    dropped: Counter
    metadata: object = None
    removed: bool = False


def filter_table(uri: str, config: TableFilterConfig, say=print) -> dict:
    """Delete the rows of the images table at `uri` that `config`'s filters drop; returns the stats (also
    written to `stats_file(uri)` when rows were dropped)."""
    from lumos.curation.score_job import lock_folder

    started = time.monotonic()
    config.check()
    _open(uri)
    folder = lock_folder(uri)
    with output_lock(folder, "lumos-curate filter"):
        if folder != uri and not fs.exists(JobDir(folder).stats):
            raise UserError(f"{uri} belongs to the lumos-curate job in {folder}, which has not finished; re-run that "
                            "job to the end first")
        return _filter_locked(uri, config, started, say)


def _open(uri: str):
    if not table_exists(uri) and table_exists(JobDir(uri).images):
        raise UserError(f"--input {uri} is a lumos-curate job folder; pass its table: --input {JobDir(uri).images}")
    return open_images_table(uri, "--input")


def _filter_locked(uri: str, config: TableFilterConfig, started: float, say) -> dict:
    import lance

    ds = _open(uri)  # again, under the lock: the version judged and committed against
    fragments = ds.get_fragments()
    say(f"filter: judging {len(fragments)} fragments of {uri} (version {ds.version})")
    if config.min_aesthetic > 0 and ds.count_rows() and not _has_score(ds):  # as the web path without the column
        raise UserError(f"--min-aesthetic {config.min_aesthetic}: no row of {uri} has an aesthetic score; score it "
                        f"first (lumos-curate score --input {uri}) or pass --min-aesthetic 0")
    filters, columns = config.filters(), config.columns()
    with ThreadPoolExecutor(max_workers=max(1, min(THREADS, len(fragments)))) as pool:
        judged = list(pool.map(lambda f: _judge(f, filters, columns), fragments))
    rows = sum(j.rows for j in judged)
    dropped = sum((j.dropped for j in judged), Counter())
    before = ds.version
    changed = [j for j in judged if j.dropped]
    if changed:
        operation = lance.LanceOperation.Delete([j.metadata for j in changed if not j.removed],
                                                [j.fragment_id for j in changed if j.removed], config.predicate())
        after = lance.LanceDataset.commit(uri, operation, read_version=before).version
        left = lance.dataset(uri).count_rows()
        if left != rows - sum(dropped.values()):
            raise RuntimeError(f"{uri}: {left} rows after the filter, expected {rows - sum(dropped.values())}")
    else:
        after = before
        say("filter: no row to drop; the table is unchanged")
    kept = rows - sum(dropped.values())
    stats = {
        "table": uri,
        "rows": rows,
        "kept": kept,
        "dropped": dict(sorted(dropped.items())),
        "thresholds": config.thresholds(),
        "version_before": before,
        "version_after": after,
        "fragments": len(fragments),
        "fragments_with_deletions_added": sum(1 for j in changed if not j.removed),
        "fragments_removed": sum(1 for j in changed if j.removed),
        "timings": {"total_s": round(time.monotonic() - started, 3)},
    }
    if changed:  # a no-op leaves the stats of the run that made the table as it is
        path = stats_file(uri)
        previous = fs.read_json(path) if fs.exists(path) else None
        if previous is not None:
            stats["earlier"] = [*previous.pop("earlier", []), previous]
        fs.write_json(path, stats)
    return stats


def _has_score(ds) -> bool:
    """Whether any row carries a score (Threshold's test); stops at the first batch holding one."""
    scored = Threshold(cols.AESTHETIC, 0.0, at_least=True)
    for batch in ds.to_batches(columns=[cols.AESTHETIC], batch_size=BATCH_ROWS):
        reasons = scored.drop_reasons(pa.Table.from_batches([batch]))
        if pc.any(pc.not_equal(reasons, MISSING_SCORE).fill_null(True)).as_py():
            return True
    return False


def _judge(fragment, filters: list[Filter], columns: list[str]) -> Judged:
    """Count the fragment's rows per reason and, when some are dropped, write its deletion file (not committed)."""
    rows, dropped, addresses = 0, Counter(), []
    for batch in fragment.to_batches(columns=columns, with_row_address=True, batch_size=BATCH_ROWS):
        table = pa.Table.from_batches([batch])
        reasons = drop_reasons(table, filters)
        rows += table.num_rows
        dropped.update(count_reasons(reasons))
        addresses.append(table[ROW_ADDRESS].filter(pc.is_valid(reasons)).combine_chunks())
    judged = Judged(fragment.fragment_id, rows, dropped)
    if not dropped:
        return judged
    listed = pa.concat_arrays(addresses).to_pylist() if addresses else []
    old = fragment.metadata.deletion_file
    metadata = fragment.delete(f"{ROW_ADDRESS} IN ({','.join(map(str, listed))})")
    lost = sum(dropped.values())
    if metadata is None:
        if lost != rows:
            raise RuntimeError(f"fragment {fragment.fragment_id}: Lance removed it, {lost} of its {rows} rows dropped")
        judged.removed = True
    else:
        deleted = metadata.deletion_file.num_deleted_rows - (old.num_deleted_rows if old is not None else 0)
        if deleted != lost:
            raise RuntimeError(f"fragment {fragment.fragment_id}: {deleted} rows deleted, {lost} dropped")
        judged.metadata = metadata
    return judged


def summary(stats: dict) -> str:
    """One line: rows in, kept, dropped per reason, versions; rows without a score named with the remedy."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(stats["dropped"].items(), key=lambda kv: -kv[1]))
    dropped = sum(stats["dropped"].values())
    line = (f"filtered {stats['rows']} rows: kept {stats['kept']}, dropped {dropped}"
            f"{f' ({reasons})' if reasons else ''}; version {stats['version_before']} -> {stats['version_after']}")
    missing = stats["dropped"].get(MISSING_SCORE, 0)
    if missing:
        line += (f"; {missing} rows had no aesthetic score and were dropped as {MISSING_SCORE}: to judge such "
                 "rows by their images, run lumos-curate score before filtering")
    return line
