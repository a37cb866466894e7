"""The output folder of a curation job: its record, resume rules and stats, shared by every source.

    DIR/images.lance   the images table (schemas/images.py)
    DIR/stats.json     rows = kept + sum(dropped), per stage, with timings; written last
    DIR/_work/         the job record and the stages' resume state
A finished job run again is a no-op; the same folder with other arguments is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from lumos.floor.errors import UserError
from lumos.floor.fs import write_json
from lumos.floor.lance_io import table_exists
from lumos.floor.output_lock import LOCK_NAME
from lumos.schemas import images as cols

LOCK_FILES = {LOCK_NAME, LOCK_NAME + ".takeover"}
VERSIONED_LIBRARIES = ("lumos", "ray", "pyarrow", "pylance", "img2dataset", "opencv-python-headless", "pillow",
                       "torch", "open_clip_torch")


@dataclass
class JobDir:
    root: str

    def __post_init__(self):
        self.work = os.path.join(self.root, "_work")
        self.record = os.path.join(self.work, "job.json")
        self.images = os.path.join(self.root, "images.lance")
        self.stats = os.path.join(self.root, "stats.json")

    def finished(self, record: dict) -> bool:
        """True when the folder holds this job finished; UserError when it holds something else."""
        if not os.path.exists(self.root):
            return False
        if not os.path.isdir(self.root):
            raise UserError(f"output {self.root} exists and is not a folder")
        previous = None
        if os.path.exists(self.record):
            with open(self.record) as f:
                previous = json.load(f)
        elif table_exists(self.images):
            import lance

            previous = cols.job_of(lance.dataset(self.images).schema).get("job")
        elif set(os.listdir(self.root)) - LOCK_FILES:  # our own lock is not another job's content
            raise UserError(f"output {self.root} is not empty and holds no lumos-curate job; choose another --output")
        if previous is not None and previous != record:
            differs = sorted(k for k in set(previous) | set(record) if previous.get(k) != record.get(k))
            raise UserError(
                f"output {self.root} holds a different job (differs in: {', '.join(differs)}); choose another --output"
            )
        return os.path.exists(self.stats)

    def start(self, record: dict) -> None:
        os.makedirs(self.work, exist_ok=True)
        write_json(self.record, record)

    def schema(self, record: dict):
        """The images schema carrying this job's record and the library versions as table metadata; every job
        keeps one row per key, so its table is marked as having unique ids."""
        return cols.images_schema({"job": record, "versions": cols.library_versions(*VERSIONED_LIBRARIES)},
                                  unique_ids=True)

    def read_stats(self) -> dict:
        with open(self.stats) as f:
            return json.load(f)


def stage_stats(rows: int, kept: int, dropped) -> dict:
    return {"rows": rows, "kept": kept, "dropped": dict(sorted(dropped.items()))}


SHOWN_ARCHIVES = 10  # in the console; stats.json lists them all


def summary(stats: dict) -> str:
    lines = [f"{stats['rows']} rows in, {stats['kept']} images kept"]
    for reason, count in sorted(stats["dropped"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  dropped {count:>10}  {reason}")
    archives = stats.get("unreadable_archives") or []
    for item in archives[:SHOWN_ARCHIVES]:  # the user's next step: repair or re-fetch these files
        lines.append(f"  unreadable archive: {item['path']} ({item['error']})")
    if len(archives) > SHOWN_ARCHIVES:
        lines.append(f"  ... and {len(archives) - SHOWN_ARCHIVES} more unreadable archives: see stats.json")
    lines.append("  " + ", ".join(f"{k} {v:.1f}s" for k, v in stats["timings"].items()))
    return "\n".join(lines)
