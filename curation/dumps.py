"""Readers of local dumps: SA-1B tars, JourneyDB, ImageNet. Each lists its work units in the driver (a tar,
an archive, a chunk of files) and reads one unit inside a Ray task, yielding `RawImage`s.

A unit is small to describe (paths and annotation rows), so listing 10M images costs the driver little,
and the image bytes are only ever read inside the tasks.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.errors import UserError
from lumos.schemas import dumps as names

CHUNK = 256  # files per unit where the layout has no natural unit


@dataclass
class RawImage:
    key: str
    data: bytes | None  # None: the annotation names an image the dump does not have
    caption: str | None = None
    long_caption: str | None = None
    synset: str | None = None
    class_index: int | None = None
    declared_size: tuple[int, int] | None = None  # (width, height) the annotation claims
    reason: str | None = None  # a problem found while reading (bad annotation)


def _chunks(items: list, size: int = CHUNK) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _files(folder: str, pattern: str) -> list[str]:
    if not os.path.isdir(folder):
        raise UserError(f"input {folder} is not a folder")
    return sorted(glob.glob(os.path.join(folder, "**", pattern), recursive=True))


# --- SA-1B --------------------------------------------------------------------------------------------------

@dataclass
class SamReader:
    """SA-1B: tars of `sa_N.jpg` + `sa_N.json`; the JSON's `image` holds width and height. No captions,
    unless a caption file (SAM-LLaVA-Captions10M style: file name + caption) is joined by file name."""

    input: str
    captions: object = None  # a Ray object ref of a pyarrow table (key, caption), or None

    source = "sam"

    def units(self) -> list[dict]:
        tars = _files(self.input, "*.tar")
        if not tars:
            raise UserError(f"no .tar file in {self.input} (SA-1B ships as sa_000000.tar, ...)")
        return [{"tar": t} for t in tars]

    def read(self, unit: dict) -> Iterator[RawImage]:
        # Streamed: a tar holds ~11k images (GBs); an image and its JSON sit next to each other, so only a
        # pair in progress is held in memory.
        with tarfile.open(unit["tar"]) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]  # headers only
            captions = self._captions([os.path.basename(m.name) for m in members
                                       if m.name.lower().endswith(".jpg")])
            pending: dict[str, dict] = {}
            for member in members:
                stem, ext = os.path.splitext(os.path.basename(member.name))
                if ext.lower() not in (".jpg", ".json"):
                    continue
                pair = pending.setdefault(stem, {})
                pair[ext.lower()] = tar.extractfile(member).read()
                if len(pair) == 2:
                    yield self._raw(stem, pending.pop(stem), captions)
            for stem in sorted(pending):
                yield self._raw(stem, pending[stem], captions)

    def _raw(self, stem: str, pair: dict, captions: dict) -> RawImage:
        name = f"{stem}.jpg"
        raw = RawImage(key=name, data=pair.get(".jpg"), caption=captions.get(name))
        if ".json" not in pair:
            raw.reason = "missing_annotation"
            return raw
        try:
            info = json.loads(pair[".json"])[names.SAM_IMAGE]
            raw.declared_size = (int(info[names.SAM_WIDTH]), int(info[names.SAM_HEIGHT]))
        except (ValueError, KeyError, TypeError):
            raw.reason = "bad_annotation"
        return raw

    def _captions(self, keys: list[str]) -> dict[str, str]:
        if self.captions is None or not keys:
            return {}
        import ray

        table: pa.Table = ray.get(self.captions)  # zero-copy from the object store
        wanted = pa.array(keys, pa.string())
        found = table.filter(pc.is_in(table[names.CAPTION_KEY], value_set=wanted))
        return dict(zip(found[names.CAPTION_KEY].to_pylist(), found[names.CAPTION_TEXT].to_pylist()))


def read_caption_file(path: str) -> pa.Table:
    """A caption file (parquet, jsonl or json) as a (key, caption) table; keys are bare file names."""
    try:
        if path.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            with open(path) as f:
                text = f.read()
            lines = [json.loads(x) for x in text.splitlines() if x.strip()] if not text.lstrip().startswith("[") else None
            rows = json.loads(text) if lines is None else lines
            table = pa.Table.from_pylist(rows)
    except (OSError, ValueError, pa.ArrowInvalid) as err:
        raise UserError(f"cannot read caption file {path}: {err}") from None
    key = next((c for c in names.CAPTION_KEY_CANDIDATES if c in table.column_names), None)
    text = next((c for c in names.CAPTION_TEXT_CANDIDATES if c in table.column_names), None)
    if key is None or text is None:
        raise UserError(
            f"caption file {path} needs a file-name column ({', '.join(names.CAPTION_KEY_CANDIDATES)}) and a "
            f"caption column ({', '.join(names.CAPTION_TEXT_CANDIDATES)}); it has {', '.join(table.column_names)}"
        )
    keys = pa.array([os.path.basename(k) if k else k for k in table[key].cast(pa.string()).to_pylist()], pa.string())
    return pa.table({names.CAPTION_KEY: keys, names.CAPTION_TEXT: table[text].cast(pa.string())})


# --- JourneyDB ----------------------------------------------------------------------------------------------

@dataclass
class JourneyDBReader:
    """JourneyDB: a jsonl of annotations (`img_path` like ./000/<id>.jpg, `prompt`, optional
    `Task2.Caption`) and images either as files DIR/000/<id>.jpg or inside archives DIR/000.tgz."""

    input: str
    annotations: str

    source = "journeydb"

    def units(self) -> list[dict]:
        if not os.path.isdir(self.input):
            raise UserError(f"input {self.input} is not a folder")
        try:
            with open(self.annotations) as f:
                lines = [line for line in f if line.strip()]
        except OSError as err:
            raise UserError(f"cannot read annotations {self.annotations}: {err.strerror}") from None
        rows = []
        for line in lines:
            try:
                item = json.loads(line)
                rows.append({"key": os.path.normpath(item[names.JDB_PATH]), "prompt": item.get(names.JDB_PROMPT),
                             "long": (item.get(names.JDB_TASK2) or {}).get(names.JDB_CAPTION)})
            except (ValueError, KeyError, TypeError, AttributeError):  # counted as bad_annotation
                rows.append({"key": f"annotation-line-{len(rows)}", "bad": True})
        if not rows:
            raise UserError(f"annotations {self.annotations} hold no rows")
        by_folder: dict[str, list] = {}
        for row in rows:
            by_folder.setdefault(os.path.dirname(row["key"]), []).append(row)
        units = []
        for folder, items in sorted(by_folder.items()):
            archive = os.path.join(self.input, f"{folder}.tgz")
            if folder and os.path.isfile(archive):
                units.append({"archive": archive, "rows": items})
            else:
                units.extend({"archive": None, "rows": chunk} for chunk in _chunks(items))
        return units

    def read(self, unit: dict) -> Iterator[RawImage]:
        rows = unit["rows"]
        if unit["archive"]:  # streamed member by member: an archive holds GBs
            by_name = {os.path.basename(r["key"]): r for r in rows if not r.get("bad")}
            with tarfile.open(unit["archive"]) as tar:
                for member in tar:
                    row = by_name.pop(os.path.basename(member.name), None) if member.isfile() else None
                    if row is not None:
                        yield self._raw(row, tar.extractfile(member).read())
            rows = [r for r in rows if r.get("bad") or os.path.basename(r["key"]) in by_name]
        for row in rows:
            path = None if row.get("bad") or unit["archive"] else os.path.join(self.input, row["key"])
            yield self._raw(row, _read_file(path) if path and os.path.isfile(path) else None)

    def _raw(self, row: dict, data: bytes | None) -> RawImage:
        if row.get("bad"):
            return RawImage(key=row["key"], data=None, reason="bad_annotation")
        return RawImage(key=row["key"], data=data, caption=row["prompt"], long_caption=row["long"])


# --- ImageNet -----------------------------------------------------------------------------------------------

FOLDER_SYNSET = re.compile(r"n\d{8}")  # train/n01440764/x.JPEG
FLAT_SYNSET = re.compile(r"_(n\d{8})$")  # ILSVRC2012_val_00000001_n01751748.JPEG


@dataclass
class ImageNetReader:
    """ImageNet: ImageFolder (`train/nXXXXXXXX/*.JPEG`) or flat files whose name ends in the synset
    (`ILSVRC2012_val_00000001_n01751748.JPEG`). The class index is the synset's position in `synsets`
    (LOC_synset_mapping.txt order, when given) or in the sorted synsets found."""

    input: str
    synsets_file: str | None = None

    source = "imagenet"

    def units(self) -> list[dict]:
        files = [p for p in _files(self.input, "*") if os.path.isfile(p)
                 and os.path.splitext(p)[1].lower() in (".jpeg", ".jpg", ".png")]
        if not files:
            raise UserError(f"no image file in {self.input}")
        items = []
        for path in files:
            rel = os.path.relpath(path, self.input)
            parent = os.path.basename(os.path.dirname(path))
            in_name = FLAT_SYNSET.search(os.path.splitext(os.path.basename(path))[0])
            synset = parent if FOLDER_SYNSET.fullmatch(parent) else (in_name.group(1) if in_name else None)
            items.append({"path": rel, "synset": synset})
        order = self._synset_order(sorted({i["synset"] for i in items if i["synset"]}))
        for item in items:
            item["class_index"] = order.get(item["synset"])
        return [{"items": chunk} for chunk in _chunks(items)]

    def _synset_order(self, found: list[str]) -> dict[str, int]:
        if not self.synsets_file:
            return {s: i for i, s in enumerate(found)}
        try:
            with open(self.synsets_file) as f:
                listed = [line.split()[0] for line in f if line.strip()]
        except OSError as err:
            raise UserError(f"cannot read --synsets {self.synsets_file}: {err.strerror}") from None
        return {s: i for i, s in enumerate(listed)}

    def read(self, unit: dict) -> Iterator[RawImage]:
        for item in unit["items"]:
            raw = RawImage(key=item["path"], data=_read_file(os.path.join(self.input, item["path"])), synset=item["synset"], class_index=item["class_index"])
            if item["synset"] is None:
                raw.reason = "no_synset"
            elif item["class_index"] is None:
                raw.reason = "unknown_synset"
            yield raw
