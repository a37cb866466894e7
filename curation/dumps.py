"""Readers of the dumps: SA-1B tars, JourneyDB, ImageNet, on a local disk or an object store (`s3://...`,
through pyarrow's filesystem layer, lumos.floor.fs). The reader contract that curation/dump_job.py drives:

    reader.units()            driver, before the output is touched: checks the inputs (a UserError, one line)
                              and lists them: a sorted list of small JSON dicts, paths only (a tar, a file)
    reader.plan(units, work)  driver, output locked and Ray started: the distributed pre-passes (Ray Data;
                              curation/dedup.py), whose results go to small files under the job's work folder
                              → (the reader to ship to the tasks, the final units: the same inputs always give
                              the same units, so a resumed job finds its own)
    reader.read(unit)         inside a Ray task: yields a `RawImage` per row

Nothing per image or per caption passes through the driver: it lists paths (one per tar, archive or
annotation file; ImageNet: one per image file) and gets back one row per written plan file.

Hostile input is a counted reason, never an exception out of `read()`:
- one key, one row: repeats are found by the pre-pass (SA-1B: the same image name in two places; JourneyDB:
  the same img_path on two lines; the first wins). The loser is `duplicate_key`, or `duplicate_key_conflict`
  when its content differs (SA-1B: the image bytes; JourneyDB: the annotation).
- a sidecar or annotation line that cannot be parsed, or holds a value of the wrong type (a width that is
  text, fractional or absurd; a prompt that is a number; text that is not UTF-8): `bad_annotation`; an
  SA-1B caption (from --captions) that is not UTF-8: `bad_caption`.
- a member or file name that is not UTF-8: `bad_key`; a file that cannot be read: `unreadable_file`.
- a path that leaves --input (`..`, an absolute path, locally also a symlink pointing outside):
  `outside_input`.
- an archive that cannot be read (not a tar, truncated, a .tgz that is not gzip): one row for the archive,
  `unreadable_archive`, with a one-line error that the job's stats name. The members read whole before the
  damage are kept (SA-1B: a tar truncated at 99% keeps 99% of its images); JourneyDB rows whose image
  was not read from it are `missing_image`.
"""

from __future__ import annotations

import fnmatch
import glob
import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lumos.floor import fs
from lumos.floor.errors import UserError
from lumos.schemas import dumps as names
from lumos.schemas import images as cols

CHUNK = 10_000  # files (or annotation lines) a work unit where the layout has none: one fragment, ~0.6 GB of 512-px JPEG
MAX_SIDE = 2**31 - 1  # a declared size must fit the table's int32 columns
SAM_IMAGE_EXT, SAM_SIDECAR_EXT = ".jpg", ".json"
# What a damaged tar or gzip raises (pyarrow's own errors on an object store are OSErrors, or these).
ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, pa.ArrowException)
HEADER_BUFFER = 64 << 10  # bytes a read of a tar's headers fetches at a time on an object store
GLOB_CHARS = "*?["
CAPTION_EXTS = (".parquet", ".jsonl", ".json")
ANNOTATION_EXTS = (".jsonl", ".json")
FIRST_RECORD_BYTES = 1 << 20  # how much of a caption file the driver reads to find its columns


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


def _kind(uri: str) -> pafs.FileType:
    """File, Directory (on an object store: a prefix with objects under it) or NotFound."""
    if fs.is_local(uri):
        return (pafs.FileType.Directory if os.path.isdir(uri) else pafs.FileType.File if os.path.isfile(uri)
                else pafs.FileType.NotFound)
    try:
        filesystem, path = fs.resolve(uri)
        return filesystem.get_file_info(path).type
    except (OSError, ValueError, pa.ArrowException):  # a bucket that is not there, a malformed URI
        return pafs.FileType.NotFound


def _files(folder: str, pattern: str) -> list[str]:
    """The files under `folder` whose name matches `pattern`, sorted: paths only (the driver's listing)."""
    if _kind(folder) != pafs.FileType.Directory:
        raise UserError(f"input {folder} is not a folder")
    if fs.is_local(folder):  # glob, not pyarrow: a local name that is not UTF-8 is a row's bad_key, not a crash
        return sorted(glob.glob(os.path.join(folder, "**", pattern), recursive=True))
    return [p for p in fs.list_files(folder) if fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pattern)
            and not any(part.startswith(".") for part in relative(folder, p).split("/"))]  # as glob: no dot files


def relative(root: str, path: str) -> str:
    """`path` under `root`, as a relative path (with `/` on an object store)."""
    if fs.is_local(root):
        return os.path.relpath(path, root)
    return path[len(root.rstrip("/")) + 1:]


def input_files(spec: str, what: str, exts: tuple[str, ...]) -> list[str]:
    """The files that `spec` names (a file, a folder: its files ending in `exts`, or a glob), sorted; a
    UserError in one line when there is none or one cannot be opened."""
    if any(c in spec for c in GLOB_CHARS):
        if fs.is_local(spec):
            files = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        else:
            base = spec[: min(spec.index(c) for c in GLOB_CHARS if c in spec)].rsplit("/", 1)[0]
            files = [p for p in fs.list_files(base) if fnmatch.fnmatchcase(p, spec)]
    elif _kind(spec) == pafs.FileType.Directory:
        files = [p for p in (_files(spec, "*") if fs.is_local(spec) else fs.list_files(spec))
                 if p.lower().endswith(exts) and (not fs.is_local(p) or os.path.isfile(p))]
    elif _kind(spec) == pafs.FileType.File:
        files = [spec]
    else:
        raise UserError(f"cannot read {what} {spec}: No such file or directory")
    if not files:
        raise UserError(f"cannot read {what} {spec}: no {' or '.join(exts)} file there")
    for path in files:
        if fs.is_local(path):  # a file we may not read fails now, not in a task
            try:
                open(path, "rb").close()
            except OSError as err:
                raise UserError(f"cannot read {what} {path}: {err.strerror}") from None
    return files


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
    """True when `path`, symlinks resolved, lies inside the folder `root` (local paths)."""
    try:
        real_root, real = os.path.realpath(root), os.path.realpath(path)
    except (OSError, ValueError):
        return False
    return os.path.commonpath([real_root, real]) == real_root


def escapes(key: str) -> bool:
    """A relative path that names a file outside --input on its face (a symlink is caught when read)."""
    parts = key.replace(os.sep, "/").split("/")
    return os.path.isabs(key) or key.startswith("/") or os.pardir in parts


def _read_file(root: str, rel: str) -> tuple[bytes | None, str | None]:
    """The bytes of the file `rel` under `root` (or None when there is no such file), or the reason it may not
    or cannot be read."""
    if not fs.is_local(root):  # an object store has no symlinks: only a `..` or absolute key leaves it
        if escapes(rel):
            return None, "outside_input"
        try:
            return fs.read_bytes(fs.join(root, rel)), None
        except FileNotFoundError:
            return None, None
        except (OSError, pa.ArrowException):
            return None, "unreadable_file"
    path = os.path.join(root, rel)
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


def read_plan(path: str) -> pa.Table:
    """A plan file written by a pre-pass (curation/dedup.py): a small parquet file under the work folder."""
    return pq.read_table(pa.BufferReader(fs.read_bytes(path)))


# --- SA-1B --------------------------------------------------------------------------------------------------

BAD_TEXT = object()  # a caption whose bytes are not UTF-8


def _caption_text(value: bytes | None):
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        return BAD_TEXT


def tar_members(f) -> Iterator[tuple[tarfile.TarInfo | None, str | None]]:
    """The regular members of an uncompressed tar open as `f` (seekable) whose data lie whole in the file, as
    (member, None) in tar order, then (None, why) if the listing stopped early (a truncated or damaged tar).
    Only headers are read: the caller may read a member's data from `f` between two members."""
    try:
        size = f.seek(0, io.SEEK_END)
        f.seek(0)
        with tarfile.open(fileobj=f, mode="r:") as tar:  # SA-1B ships plain tars; a seek finds a member's bytes
            for member in tar:
                if member.offset_data + member.size > size:
                    yield None, f"{printable(member.name)} is cut off at byte {size}: the tar is truncated"
                    return
                if member.isfile():
                    yield member, None
            if size - tar.offset < 2 * tarfile.BLOCKSIZE:  # tarfile ends quietly inside a cut header
                yield None, f"no end-of-archive marker after byte {tar.offset}: the tar is truncated"
    except ARCHIVE_ERRORS as err:
        yield None, one_line(err)


def list_tar_members(path: str) -> tuple[list[tarfile.TarInfo], str | None]:
    """The regular members of the tar at `path` (a local path or URI) whose data lie whole in the file
    (headers only), and why the listing stopped early, if it did."""
    members: list[tarfile.TarInfo] = []
    try:
        f = fs.open_input_file(path, HEADER_BUFFER)
    except ARCHIVE_ERRORS as err:
        return members, one_line(err)
    with f:
        for member, damage in tar_members(f):
            if member is None:
                return members, damage
            members.append(member)
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
    unless caption files (SAM-LLaVA-Captions10M style: file name + caption; parquet, jsonl or a json array; a
    file, a folder or a glob) are joined by file name. An image and its sidecar pair up by their path in the
    tar without the extension; the key is the image's file name.

    plan() (curation/dedup.py, Ray Data) lists every tar's headers, shuffles them by key together with the
    caption rows, and writes for each tar that needs one a small plan file: its members that lose to an
    earlier copy of their key, and its kept members' captions (of a caption key given twice, the first row
    in file order wins: the files sorted by path, then the row in its file)."""

    input: str
    captions: str | None = None  # caption file(s): a path, folder, glob or URI

    source = "sam"

    def units(self) -> list[dict]:
        tars = _files(self.input, "*.tar")
        if not tars:
            raise UserError(f"no .tar file in {self.input} (SA-1B ships as sa_000000.tar, ...)")
        if self.captions:
            caption_sources(self.captions)  # a missing file or column fails now, in one line
        return [{"tar": t} for t in tars]

    def plan(self, units: list[dict], work: str) -> tuple[SamReader, list[dict]]:
        from lumos.curation.dedup import plan_sam

        sources = caption_sources(self.captions) if self.captions else []
        return self, plan_sam(units, sources, fs.join(work, "plan", self.source),
                              {"input": self.input, "captions": self.captions})

    def read(self, unit: dict) -> Iterator[RawImage]:
        # Streamed, one pass over the tar: a tar holds ~11k images (GBs); an image and its JSON sit next to
        # each other, so only a pair in progress is held in memory.
        path = unit["tar"]
        if not is_text(path):
            yield _archive_row(path, "the tar's file name is not UTF-8")
            return
        losers, captions = self._plan(unit.get("plan"))
        pending: dict[str, dict] = {}
        dropped: set[str] = set()  # pairs whose image was refused: their sidecar is not a row of its own
        damage = None
        try:
            f = fs.open_input_file(path)
        except ARCHIVE_ERRORS as err:
            yield _archive_row(path, err)
            return
        with f:
            try:
                for member, damage in tar_members(f):
                    if member is None:
                        break
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
                        pair["key"], pair["caption"] = key, captions.get(member.offset_data)
                    if SAM_IMAGE_EXT in pair and SAM_SIDECAR_EXT in pair:
                        yield self._raw(pair_id, pending.pop(pair_id))
            except ARCHIVE_ERRORS as err:  # the disk or the network failed under us: what was read stays
                damage = one_line(err)
        for pair_id in sorted(pending):
            yield self._raw(pair_id, pending[pair_id])
        if damage:
            yield _archive_row(path, damage)

    @staticmethod
    def _plan(path: str | None) -> tuple[dict[int, str], dict[int, object]]:
        """This tar's plan: {data offset: reason} of its losing members, {data offset: caption} of its kept
        ones (text, or BAD_TEXT)."""
        if not path:
            return {}, {}
        table = read_plan(path)
        offsets, reasons = table[names.OFFSET].to_pylist(), table[cols.DROP_REASON].to_pylist()
        texts = table[cols.CAPTION].to_pylist()
        losers = {o: r for o, r in zip(offsets, reasons) if r}
        captions = {o: _caption_text(t) for o, r, t in zip(offsets, reasons, texts) if not r and t is not None}
        return losers, captions

    def _raw(self, pair_id: str, pair: dict) -> RawImage:
        name = pair.get("key") or printable(os.path.basename(pair_id)) + SAM_IMAGE_EXT
        caption = pair.get("caption")
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


def _first_record(path: str) -> tuple[str, list[str]]:
    """(format, column names) of a caption file, from its footer (parquet) or its first record (jsonl, a json
    array): the driver reads at most FIRST_RECORD_BYTES of it."""
    if path.lower().endswith(".parquet"):
        with fs.open_input_file(path, HEADER_BUFFER) as f:
            return "parquet", pq.read_schema(f).names
    with fs.open_input_file(path, HEADER_BUFFER) as f:
        head = f.read(FIRST_RECORD_BYTES)
    text = head.decode("utf-8", "replace")
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "[":
        fmt, rest = "json", text[start + 1:].lstrip()
        if rest.startswith("]"):
            return fmt, []
    else:
        fmt, rest = "jsonl", next((line for line in text.splitlines() if line.strip()), "")
    if not rest:
        return fmt, []
    item, _ = json.JSONDecoder().raw_decode(rest)  # ValueError too for a first record over 1 MiB
    if not isinstance(item, dict):
        raise ValueError(f"its first record is a {type(item).__name__}, not an object")
    return fmt, list(item)


def caption_sources(spec: str) -> list[dict]:
    """The caption files `spec` names, each as the description a Ray task reads it from: {file (its
    position), input_path, format, key (the file-name column), text (the caption column)}. Checked in the driver
    (paths and the first record or footer of each file only): a missing file or column is a UserError."""
    sources = []
    for index, path in enumerate(input_files(spec, "caption file", CAPTION_EXTS)):
        try:
            fmt, columns = _first_record(path)
        except (OSError, ValueError, pa.ArrowException) as err:
            raise UserError(f"cannot read caption file {path}: {' '.join(str(err).split())[:300]}") from None
        key = next((c for c in names.CAPTION_KEY_CANDIDATES if c in columns), None)
        text = next((c for c in names.CAPTION_TEXT_CANDIDATES if c in columns), None)
        if columns and (key is None or text is None):
            raise UserError(
                f"caption file {path} needs a file-name column ({', '.join(names.CAPTION_KEY_CANDIDATES)}) and "
                f"a caption column ({', '.join(names.CAPTION_TEXT_CANDIDATES)}); it has {', '.join(columns)}"
            )
        if columns:  # an empty file holds no caption
            sources.append({names.FILE: index, names.INPUT_PATH: path, "format": fmt, "key": key, "text": text})
    return sources


def caption_key(value) -> str | None:
    """A caption row's key as a bare file name (the caption files may hold paths), or None."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None  # matches no member: a member name that is not UTF-8 is bad_key
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or not is_text(value):
        return None
    return value.replace("\\", "/").rsplit("/", 1)[-1] or None


def caption_bytes(value) -> bytes | None:
    """A caption as bytes: checked as UTF-8 only when its image is read (one bad caption is its row's)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")  # a lone surrogate: not UTF-8, so bad_caption
    return json.dumps(value).encode()


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


def jdb_archive(root: str, folder: str) -> str | None:
    """The archive DIR/<folder>.tgz that holds a folder's images, when there is one."""
    if not folder:
        return None
    archive = fs.join(root, f"{folder}.tgz")
    return archive if _kind(archive) == pafs.FileType.File else None


@dataclass
class JourneyDBReader:
    """JourneyDB: a jsonl of annotations (`img_path` like ./000/<id>.jpg, `prompt`, optional
    `Task2.Caption`; one file, a folder or a glob of them) and images either as files DIR/000/<id>.jpg or
    inside archives DIR/000.tgz. The key is img_path normalised (`000/<id>.jpg`); of repeated lines the
    first in file order (the files sorted by path, then the line) wins.

    plan() (curation/dedup.py, Ray Data) parses the lines in Ray tasks, shuffles them by key (the first line
    wins), then by work unit (an archive's folder, or a chunk of CHUNK lines read as files), and writes each
    unit's rows to a small file under the work folder; a unit is {archive, annotations: that file}."""

    input: str
    annotations: str

    source = "journeydb"

    def units(self) -> list[dict]:
        if _kind(self.input) != pafs.FileType.Directory:
            raise UserError(f"input {self.input} is not a folder")
        files = input_files(self.annotations, "annotations", ANNOTATION_EXTS)
        return [{"annotation_file": f} for f in files]

    def plan(self, units: list[dict], work: str) -> tuple[JourneyDBReader, list[dict]]:
        from lumos.curation.dedup import plan_journeydb

        units = plan_journeydb(self.input, [u["annotation_file"] for u in units],
                               fs.join(work, "plan", self.source),
                               {"input": self.input, "annotations": self.annotations})
        if not units:
            raise UserError(f"annotations {self.annotations} hold no rows")
        return self, units

    def read(self, unit: dict) -> Iterator[RawImage]:
        table = read_plan(unit["annotations"])
        rows = [dict(zip(("key", "prompt", "long", "reason"), r)) for r in zip(
            *(table[c].to_pylist() for c in (cols.KEY, cols.CAPTION, cols.LONG_CAPTION, cols.DROP_REASON)))]
        for row in rows:
            if row["reason"]:  # refused by the pre-pass: nothing to read
                yield RawImage(key=row["key"], data=None, reason=row["reason"])
        rows = [r for r in rows if not r["reason"]]
        if unit["archive"]:
            yield from self._read_archive(unit["archive"], rows)
            return
        for row in rows:
            data, reason = _read_file(self.input, row["key"])
            yield self._raw(row, data, reason)

    def _read_archive(self, archive: str, rows: list[dict]) -> Iterator[RawImage]:
        if fs.is_local(archive) and not inside(self.input, archive):
            for row in rows:
                yield self._raw(row, None, "outside_input")
            return
        by_name = {os.path.basename(r["key"]): r for r in rows}
        try:
            with fs.open_input_file(archive) as f, tarfile.open(fileobj=f) as tar:  # streamed: an archive holds GBs
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
IMAGE_EXTS = (".jpeg", ".jpg", ".png")


def synset_of(path: str) -> str | None:
    """The synset a file's path names: its folder (ImageFolder) or the end of its name (flat)."""
    path = path.replace(os.sep, "/")
    parent = path.rsplit("/", 2)[-2] if path.count("/") else ""
    in_name = FLAT_SYNSET.search(os.path.splitext(path.rsplit("/", 1)[-1])[0])
    return parent if FOLDER_SYNSET.fullmatch(parent) else (in_name.group(1) if in_name else None)


@dataclass
class ImageNetReader:
    """ImageNet: ImageFolder (`train/nXXXXXXXX/*.JPEG`) or flat files whose name ends in the synset
    (`ILSVRC2012_val_00000001_n01751748.JPEG`). The class index is the synset's position in `synsets`
    (LOC_synset_mapping.txt order, when given) or in the sorted synsets found. The key is the path under
    --input, unique by construction; a file that is a symlink out of --input is `outside_input`. A unit is a
    chunk of paths; plan() fixes the class list (one entry per synset), which the reader carries."""

    input: str
    synsets_file: str | None = None
    classes: dict[str, int] | None = field(default=None)  # synset → class index, set by plan()

    source = "imagenet"

    def units(self) -> list[dict]:
        files = [relative(self.input, p) for p in _files(self.input, "*")
                 if os.path.splitext(p)[1].lower() in IMAGE_EXTS and (not fs.is_local(p) or os.path.isfile(p))]
        if not files:
            raise UserError(f"no image file in {self.input}")
        if self.synsets_file:
            self._listed_synsets()  # an unreadable --synsets fails now, in one line
        return [{"paths": chunk} for chunk in _chunks(files)]

    def plan(self, units: list[dict], work: str) -> tuple[ImageNetReader, list[dict]]:
        if self.synsets_file:
            listed = self._listed_synsets()
        else:  # a pass over the listed paths in the driver, keeping one entry per synset
            listed = sorted({s for u in units for s in map(synset_of, u["paths"]) if s})
        return replace(self, classes={s: i for i, s in enumerate(listed)}), units

    def _listed_synsets(self) -> list[str]:
        try:
            text = fs.read_bytes(self.synsets_file).decode("utf-8", "replace")
        except (OSError, pa.ArrowException) as err:
            raise UserError(f"cannot read --synsets {self.synsets_file}: "
                            f"{getattr(err, 'strerror', None) or one_line(err)}") from None
        return [line.split()[0] for line in text.splitlines() if line.strip()]

    def read(self, unit: dict) -> Iterator[RawImage]:
        classes = self.classes or {}
        for path in unit["paths"]:
            if not is_text(path):
                yield RawImage(key=printable(path), data=None, reason="bad_key")
                continue
            data, reason = _read_file(self.input, path)
            synset = synset_of(path)
            raw = RawImage(key=path, data=data, synset=synset, class_index=classes.get(synset), reason=reason)
            if raw.reason is None and synset is None:
                raw.reason = "no_synset"
            elif raw.reason is None and raw.class_index is None:
                raw.reason = "unknown_synset"
            yield raw
