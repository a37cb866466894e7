"""Readers of local dumps: SA-1B tars, JourneyDB, ImageNet. Each lists its work units in the driver (a tar,
an archive, a chunk of files) and reads one unit inside a Ray task, yielding `RawImage`s.

A unit is small to describe (paths and annotation rows), so listing 10M images costs the driver little,
and the image bytes are only ever read inside the tasks.

Hostile input is a counted reason, never an exception out of `read()`:
- one key, one row: SA-1B repeats are found before reading (curation/dedup.py); JourneyDB's repeated
  annotation lines are found while listing (the first line wins). The loser is `duplicate_key`, or
  `duplicate_key_conflict` when its content differs (SA-1B: the image bytes; JourneyDB: the annotation).
- a sidecar or annotation line that cannot be parsed, or holds a value of the wrong type (a width that is
  text, fractional or absurd; a prompt that is a number; text that is not UTF-8): `bad_annotation`; an
  SA-1B caption (from --captions) that is not UTF-8: `bad_caption`.
- a member or file name that is not UTF-8: `bad_key`; a file that cannot be read: `unreadable_file`.
- a path that leaves --input (`..`, an absolute path, a symlink pointing outside): `outside_input`.
- an archive that cannot be read (not a tar, truncated, a .tgz that is not gzip): one row for the archive,
  `unreadable_archive`, with a one-line error that the job's stats name. The members read whole before the
  damage are kept (SA-1B: a tar truncated at 99% keeps 99% of its images); JourneyDB rows whose image
  was not read from it are `missing_image`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from lumos.floor.errors import UserError
from lumos.schemas import dumps as names

CHUNK = 256  # files per unit where the layout has no natural unit
MAX_SIDE = 2**31 - 1  # a declared size must fit the table's int32 columns
SAM_IMAGE_EXT, SAM_SIDECAR_EXT = ".jpg", ".json"
ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)  # what a damaged tar or gzip raises


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
    error: str | None = None  # unreadable_archive: why, in one line


def _chunks(items: list, size: int = CHUNK) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _files(folder: str, pattern: str) -> list[str]:
    if not os.path.isdir(folder):
        raise UserError(f"input {folder} is not a folder")
    return sorted(glob.glob(os.path.join(folder, "**", pattern), recursive=True))


def is_text(value: str) -> bool:
    """True when `value` can be stored as UTF-8 (a name or JSON string may carry lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(value: str) -> str:
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def inside(root: str, path: str) -> bool:
    """True when `path`, symlinks resolved, lies inside the folder `root`."""
    try:
        real_root, real = os.path.realpath(root), os.path.realpath(path)
    except (OSError, ValueError):
        return False
    return os.path.commonpath([real_root, real]) == real_root


def _read_file(root: str, path: str) -> tuple[bytes | None, str | None]:
    """The bytes of `path` (or None when it is not a file), or the reason it may not or cannot be read."""
    if not inside(root, path):
        return None, "outside_input"
    if not os.path.isfile(path):
        return None, None
    try:
        with open(path, "rb") as f:
            return f.read(), None
    except OSError:
        return None, "unreadable_file"


def _archive_row(path: str, err: BaseException | str) -> RawImage:
    error = err if isinstance(err, str) else one_line(err)
    return RawImage(key=printable(path), data=None, reason="unreadable_archive", error=error)


# --- SA-1B --------------------------------------------------------------------------------------------------

BAD_TEXT = object()  # a caption whose bytes are not UTF-8


def _caption_text(value: bytes | None):
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        return BAD_TEXT


def list_tar_members(path: str) -> tuple[list[tarfile.TarInfo], str | None]:
    """The regular members of an uncompressed tar whose data lies whole in the file (headers only), and
    why the listing stopped early, if it did (a truncated or damaged tar)."""
    members: list[tarfile.TarInfo] = []
    try:
        size = os.path.getsize(path)
        with tarfile.open(path, "r:") as tar:  # SA-1B ships plain tars; a seek finds a member's bytes
            for member in tar:
                if member.offset_data + member.size > size:
                    return members, f"{printable(member.name)} is cut off at byte {size}: the tar is truncated"
                if member.isfile():
                    members.append(member)
            if size - tar.offset < 2 * tarfile.BLOCKSIZE:  # tarfile ends quietly inside a cut header
                return members, f"no end-of-archive marker after byte {tar.offset}: the tar is truncated"
    except ARCHIVE_ERRORS as err:
        return members, one_line(err)
    return members, None


def sam_image_name(member: tarfile.TarInfo) -> str | None:
    """The key of an image member (its file name), or None for another member or a name that is not UTF-8."""
    name = os.path.basename(member.name)
    return name if name.lower().endswith(SAM_IMAGE_EXT) and is_text(name) else None


def declared_size(sidecar: bytes) -> tuple[int, int] | None:
    """(width, height) from an SA-1B sidecar, or None when it is not JSON or they are not positive ints."""
    try:
        info = json.loads(sidecar)[names.SAM_IMAGE]
        size = (info[names.SAM_WIDTH], info[names.SAM_HEIGHT])
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):  # bad UTF-8, 10**5000, [[[[...
        return None
    if not all(type(v) is int and 0 < v <= MAX_SIDE for v in size):  # "abc", 12.5, 1e999 (inf), True
        return None
    return size


@dataclass
class SamReader:
    """SA-1B: tars of `sa_N.jpg` + `sa_N.json`; the JSON's `image` holds width and height. No captions,
    unless a caption file (SAM-LLaVA-Captions10M style: file name + caption) is joined by file name.
    An image and its sidecar pair up by their path in the tar without the extension; the key is the
    image's file name."""

    input: str
    captions: object = None  # a Ray object ref of a pyarrow table (key, caption), or None
    verdicts: list | None = None  # from dedup(): object refs of the losing copies of repeated keys

    source = "sam"

    def units(self) -> list[dict]:
        tars = _files(self.input, "*.tar")
        if not tars:
            raise UserError(f"no .tar file in {self.input} (SA-1B ships as sa_000000.tar, ...)")
        return [{"tar": t} for t in tars]

    def dedup(self, units: list[dict]) -> SamReader:
        """This reader, told which members lose to an earlier copy of their key (a Ray pre-pass)."""
        from lumos.curation.dedup import find_duplicates

        return replace(self, verdicts=find_duplicates([u["tar"] for u in units]))

    def read(self, unit: dict) -> Iterator[RawImage]:
        # Streamed: a tar holds ~11k images (GBs); an image and its JSON sit next to each other, so only a
        # pair in progress is held in memory.
        from lumos.curation.dedup import losers_in

        path = unit["tar"]
        if not is_text(path):
            yield _archive_row(path, "the tar's file name is not UTF-8")
            return
        members, damage = list_tar_members(path)
        losers = losers_in(self.verdicts, path)
        captions = self._captions([k for k in map(sam_image_name, members) if k])
        pending: dict[str, dict] = {}
        dropped: set[str] = set()  # pairs whose image was refused: their sidecar is not a row of its own
        try:
            with open(path, "rb") as f:
                for member in members:
                    pair_id, ext = os.path.splitext(member.name)
                    ext = ext.lower()
                    if ext == SAM_IMAGE_EXT:
                        key = sam_image_name(member)
                        reason = "bad_key" if key is None else losers.get(member.offset_data)
                        if reason:
                            pending.pop(pair_id, None)
                            dropped.add(pair_id)
                            yield RawImage(key=key or printable(os.path.basename(member.name)), data=None,
                                           reason=reason)
                            continue
                    elif ext != SAM_SIDECAR_EXT or pair_id in dropped:
                        continue
                    f.seek(member.offset_data)
                    pair = pending.setdefault(pair_id, {})
                    pair[ext] = f.read(member.size)
                    if ext == SAM_IMAGE_EXT:
                        pair["key"] = key
                    if SAM_IMAGE_EXT in pair and SAM_SIDECAR_EXT in pair:
                        yield self._raw(pair_id, pending.pop(pair_id), captions)
        except OSError as err:  # the disk failed under us: what was read stays, the rest is the archive's
            damage = one_line(err)
        for pair_id in sorted(pending):
            yield self._raw(pair_id, pending[pair_id], captions)
        if damage:
            yield _archive_row(path, damage)

    def _raw(self, pair_id: str, pair: dict, captions: dict) -> RawImage:
        name = pair.get("key") or printable(os.path.basename(pair_id)) + SAM_IMAGE_EXT
        caption = captions.get(name)
        raw = RawImage(key=name, data=pair.get(SAM_IMAGE_EXT), caption=None if caption is BAD_TEXT else caption)
        if caption is BAD_TEXT:
            raw.reason = "bad_caption"
            return raw
        if SAM_SIDECAR_EXT not in pair:
            raw.reason = "missing_annotation"
            return raw
        raw.declared_size = declared_size(pair[SAM_SIDECAR_EXT])
        if raw.declared_size is None:
            raw.reason = "bad_annotation"
        return raw

    def _captions(self, keys: list[str]) -> dict[str, str]:
        if self.captions is None or not keys:
            return {}
        import ray

        table: pa.Table = ray.get(self.captions)  # zero-copy from the object store
        wanted = pa.array(keys, pa.string())
        found = table.filter(pc.is_in(table[names.CAPTION_KEY], value_set=wanted))
        # As bytes: a parquet string column is not checked for UTF-8 when read; one bad caption is its row's.
        texts = found[names.CAPTION_TEXT].cast(pa.binary()).to_pylist()
        return dict(zip(found[names.CAPTION_KEY].to_pylist(), map(_caption_text, texts)))


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

def _optional_text(value) -> bool:
    return value is None or (isinstance(value, str) and is_text(value))


def parse_jdb_line(line: bytes) -> dict | None:
    """One annotation line as {key, prompt, long}, or None when it is not usable (not UTF-8 or JSON, too
    deep, an img_path that is not a plain relative-looking string, a prompt or caption that is not text)."""
    try:
        item = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(item, dict):
        return None
    path, task2 = item.get(names.JDB_PATH), item.get(names.JDB_TASK2)
    if not isinstance(path, str) or not path.strip() or "\x00" in path or not is_text(path):
        return None
    if task2 is not None and not isinstance(task2, dict):
        return None
    row = {"key": os.path.normpath(path), "prompt": item.get(names.JDB_PROMPT),
           "long": (task2 or {}).get(names.JDB_CAPTION)}
    return row if _optional_text(row["prompt"]) and _optional_text(row["long"]) else None


def _escapes(key: str) -> bool:
    """An img_path that names a file outside --input on its face (a symlink is caught when read)."""
    return os.path.isabs(key) or key == os.pardir or key.startswith(os.pardir + os.sep)


@dataclass
class JourneyDBReader:
    """JourneyDB: a jsonl of annotations (`img_path` like ./000/<id>.jpg, `prompt`, optional
    `Task2.Caption`) and images either as files DIR/000/<id>.jpg or inside archives DIR/000.tgz.
    The key is img_path normalised (`000/<id>.jpg`); of repeated lines the first in the file wins."""

    input: str
    annotations: str

    source = "journeydb"

    def units(self) -> list[dict]:
        if not os.path.isdir(self.input):
            raise UserError(f"input {self.input} is not a folder")
        try:
            with open(self.annotations, "rb") as f:  # bytes: one line that is not UTF-8 is that line's problem
                lines = f.read().splitlines()
        except OSError as err:
            raise UserError(f"cannot read annotations {self.annotations}: {err.strerror}") from None
        rows, first = [], {}  # first: the kept row of each key (the annotations are in the driver already)
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            row = parse_jdb_line(line)
            if row is None:
                rows.append({"key": f"annotation-line-{number}", "reason": "bad_annotation"})
                continue
            kept = first.setdefault(row["key"], row)
            if kept is not row:
                same = (kept["prompt"], kept["long"]) == (row["prompt"], row["long"])
                row = {"key": row["key"], "reason": "duplicate_key" if same else "duplicate_key_conflict"}
            elif _escapes(row["key"]):
                row["reason"] = "outside_input"
            rows.append(row)
        if not rows:
            raise UserError(f"annotations {self.annotations} hold no rows")
        by_folder: dict[str, list] = {}
        for row in rows:
            folder = "" if row.get("reason") else os.path.dirname(row["key"])
            by_folder.setdefault(folder, []).append(row)
        units = []
        for folder, items in sorted(by_folder.items()):
            archive = os.path.join(self.input, f"{folder}.tgz")
            if folder and os.path.isfile(archive):
                units.append({"archive": archive, "rows": items})
            else:
                units.extend({"archive": None, "rows": chunk} for chunk in _chunks(items))
        return units

    def dedup(self, units: list[dict]) -> JourneyDBReader:
        return self  # repeated lines were found while listing the annotations (units())

    def read(self, unit: dict) -> Iterator[RawImage]:
        rows = [r for r in unit["rows"] if not r.get("reason")]
        for row in unit["rows"]:
            if row.get("reason"):  # refused while listing: nothing to read
                yield RawImage(key=row["key"], data=None, reason=row["reason"])
        if unit["archive"]:
            yield from self._read_archive(unit["archive"], rows)
            return
        for row in rows:
            data, reason = _read_file(self.input, os.path.join(self.input, row["key"]))
            yield self._raw(row, data, reason)

    def _read_archive(self, archive: str, rows: list[dict]) -> Iterator[RawImage]:
        if not inside(self.input, archive):
            for row in rows:
                yield self._raw(row, None, "outside_input")
            return
        by_name = {os.path.basename(r["key"]): r for r in rows}
        try:
            with tarfile.open(archive) as tar:  # streamed member by member: an archive holds GBs
                for member in tar:
                    name = os.path.basename(member.name)
                    if member.isfile() and name in by_name:
                        data = tar.extractfile(member).read()  # may fail: the row stays in by_name
                        yield self._raw(by_name.pop(name), data)
        except ARCHIVE_ERRORS as err:
            yield _archive_row(archive, err)
        for row in by_name.values():  # not in the archive, or behind the damage
            yield self._raw(row, None)

    def _raw(self, row: dict, data: bytes | None, reason: str | None = None) -> RawImage:
        return RawImage(key=row["key"], data=data, caption=row["prompt"], long_caption=row["long"], reason=reason)


# --- ImageNet -----------------------------------------------------------------------------------------------

FOLDER_SYNSET = re.compile(r"n\d{8}")  # train/n01440764/x.JPEG
FLAT_SYNSET = re.compile(r"_(n\d{8})$")  # ILSVRC2012_val_00000001_n01751748.JPEG


@dataclass
class ImageNetReader:
    """ImageNet: ImageFolder (`train/nXXXXXXXX/*.JPEG`) or flat files whose name ends in the synset
    (`ILSVRC2012_val_00000001_n01751748.JPEG`). The class index is the synset's position in `synsets`
    (LOC_synset_mapping.txt order, when given) or in the sorted synsets found. The key is the path under
    --input, unique by construction; a file that is a symlink out of --input is `outside_input`."""

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
            path = item["path"]
            if not is_text(path):
                yield RawImage(key=printable(path), data=None, reason="bad_key")
                continue
            data, reason = _read_file(self.input, os.path.join(self.input, path))
            raw = RawImage(key=path, data=data, synset=item["synset"], class_index=item["class_index"],
                           reason=reason)
            if raw.reason is None and item["synset"] is None:
                raw.reason = "no_synset"
            elif raw.reason is None and item["class_index"] is None:
                raw.reason = "unknown_synset"
            yield raw

    def dedup(self, units: list[dict]) -> ImageNetReader:
        return self  # keys are paths under --input: no two files share one

