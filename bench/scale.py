"""Scale: `lumos-encode` and `lumos-train` at N and 30·N rows, the same rows per fragment, as ratios.

For an images table of N rows and one of 30·N (default 10,000 and 300,000 rows, 1,000 rows a fragment):

1. `lumos-encode --encoder tiny-vae --encoder tiny-dino --resolution 32 --device cpu`, run as the CLI in a
   process of its own (the Ray driver): rows/s (rows / wall seconds of the command), the driver's own peak
   RSS (its VmHWM, read at exit; Ray's workers and daemons are other processes and not counted), and the
   Lance commits: the features table's version number (every commit adds one; old versions may be cleaned,
   so `len(versions())` is shown too) and the commits seen to every Lance table under the output while the
   job ran (the staging tables included: the highest manifest version of each, seen through inotify).
2. `lumos-train i2i --model DiT-T/2 ... --steps 1 --workers 1`: the seconds from process start to the end
   of step 1 (when metrics.jsonl gets its step-1 row; the process then saves a checkpoint and exits), and
   the peak RSS of each process of its tree (main + DataLoader workers), polled from /proc every 0.1 s.

Targets (issue 12): rows/s ratio >= 0.8; driver peak RSS ratio <= 1.3 and < 2 GB at 30·N; trainer
time-to-first-step ratio <= 2; trainer per-process peak RSS ratio <= 1.3. A failed command is reported with
its stderr tail; the exit status is 0 either way (a benchmark, not a test).

Images tables are synthetic (64 distinct seeded JPEGs cycled, unique ids) and cached in --work, so a re-run
only encodes and trains.

    .venv/bin/python bench/scale.py [--rows 10000] [--rows-per-fragment 1000] [--work DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import io
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

import lance
import numpy as np
import pyarrow as pa
from PIL import Image

from lumos.schemas import images as cols

SCALE = 30
DISTINCT = 64  # distinct JPEGs, cycled over the rows: making 300k rows costs 64 encodes
POLL_S = 0.1
PEAK_FILE_ENV = "LUMOS_SCALE_PEAK_FILE"

# The CLI's typer app in this process; at exit, this process's pid and own peak RSS (kB) into the file named
# by PEAK_FILE_ENV (the pid: a forked child that runs atexit handlers is not the driver). atexit handlers run last-registered first, so this one runs after Ray's shutdown.
DRIVER = """
import atexit, os, sys
def _peak():
    kb = next((line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')), '')
    with open(os.environ['{env}'], 'w') as f:
        f.write(f'{{os.getpid()}} {{kb}}')
atexit.register(_peak)
sys.argv[0] = 'lumos-encode'
from lumos.pipeline.cli import app
app()
""".format(env=PEAK_FILE_ENV)


# ---------------------------------------------------------------------------------------------- images


def distinct_jpegs(size: int, count: int = DISTINCT, seed: int = 0) -> list[bytes]:
    """`count` varied JPEGs of size×size: a smooth random field, a gradient and a few shapes, seeded."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32)
        ramp = np.linspace(0, rng.uniform(-80, 80), size, dtype=np.float32)
        pixels = pixels + (ramp[:, None, None] if rng.random() < 0.5 else ramp[None, :, None])
        pixels += rng.normal(0, 6, pixels.shape).astype(np.float32)
        y0, x0 = rng.integers(0, size // 2, 2)
        pixels[y0 : y0 + size // 3, x0 : x0 + size // 3] = rng.integers(0, 256, 3)
        buf = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _batches(rows: int, jpegs: list[bytes], size: int, schema: pa.Schema, chunk: int):
    digests = [hashlib.sha256(b).hexdigest() for b in jpegs]
    for start in range(0, rows, chunk):
        idx = np.arange(start, min(start + chunk, rows))
        keys = [str(i) for i in idx]
        n = len(idx)
        sizes = pa.array(np.full(n, size, np.int32))
        columns = {
            cols.ID: cols.make_ids("bench-scale", keys),  # unique: one per key
            cols.SOURCE: pa.array(["bench-scale"] * n, pa.string()),
            cols.KEY: pa.array(keys, pa.string()),
            cols.ORIGINAL_WIDTH: sizes, cols.ORIGINAL_HEIGHT: sizes, cols.WIDTH: sizes, cols.HEIGHT: sizes,
            cols.SHA256: pa.array([digests[i % len(jpegs)] for i in idx], pa.string()),
            cols.IMAGE: pa.array([jpegs[i % len(jpegs)] for i in idx], pa.large_binary()),
        }
        arrays = [columns.get(f.name, pa.nulls(n, f.type)) for f in schema]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def images_table(work: str, rows: int, per_fragment: int, size: int) -> str:
    """The cached images table of `rows` rows, `per_fragment` rows a fragment; made (atomically) when absent."""
    path = os.path.join(work, f"images-{rows}-{per_fragment}-{size}px.lance")
    if os.path.isdir(path):
        ds = lance.dataset(path)
        if ds.count_rows() == rows and len(ds.get_fragments()) == -(-rows // per_fragment):
            return path
        shutil.rmtree(path)
    tmp = path + ".making"
    shutil.rmtree(tmp, ignore_errors=True)
    schema = cols.images_schema({"source": "bench-scale", "rows": rows}, unique_ids=True)
    reader = pa.RecordBatchReader.from_batches(schema, _batches(rows, distinct_jpegs(size), size, schema,
                                                                min(per_fragment, 10_000)))
    lance.write_dataset(reader, tmp, schema=schema, max_rows_per_file=per_fragment,
                        max_rows_per_group=min(per_fragment, 1024))
    os.rename(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------- /proc


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _tree(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of `root` and all its descendants now."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                children.setdefault(st[0], []).append((int(name), st[1]))
    root_stat = _stat(root)
    found, todo = [], [(root, root_stat[1])] if root_stat else []
    while todo:
        pid, start = todo.pop()
        found.append((pid, start))
        todo.extend(children.get(pid, []))
    return found


def run_watched(cmd: list[str], log_dir: str, env: dict | None = None, tree: bool = False, on_poll=None,
                timeout: float | None = None) -> dict:
    """Run `cmd`, polling every POLL_S: the root's (or, with `tree`, each process's) peak RSS, and
    `on_poll(elapsed_s)`. stdout/stderr go to files in `log_dir` (no pipe to fill)."""
    out_path, err_path = os.path.join(log_dir, "stdout.txt"), os.path.join(log_dir, "stderr.txt")
    peaks: dict[tuple[int, int], int] = {}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        # A session of its own: on a timeout its whole group goes (Ray's daemons and workers included).
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)
        root_key = None
        timed_out = False
        while proc.poll() is None:
            elapsed = time.perf_counter() - t0
            if timeout and elapsed > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                timed_out = True
                break
            procs = _tree(proc.pid) if tree else [(proc.pid, (_stat(proc.pid) or (0, 0))[1])]
            for key in procs:
                kb = _hwm_kb(key[0])
                if kb is not None:
                    peaks[key] = max(peaks.get(key, 0), kb)
            if root_key is None and procs:
                root_key = procs[0]
            if on_poll:
                on_poll(elapsed)
            time.sleep(POLL_S)
        rc = proc.wait()
        wall = time.perf_counter() - t0
    if on_poll:
        on_poll(wall)
    with open(err_path, errors="replace") as f:
        err_tail = f.read()[-3000:]
    return {"rc": rc, "pid": proc.pid, "wall_s": wall, "timed_out": timed_out, "err_tail": err_tail,
            "main_peak_kb": peaks.get(root_key, 0) if root_key else 0,
            "max_peak_kb": max(peaks.values(), default=0), "processes": len(peaks)}


# ---------------------------------------------------------------------------------------------- lance


class CommitWatch:
    """The highest manifest version of every Lance table made under `root` while a command runs. Each commit
    adds one version, so for a table made during the run that is the number of commits to it, even when the
    job cleans old versions or deletes the table (its staging tables: made, committed shard by shard and
    removed within milliseconds at small sizes, too fast for polling). Seen through Linux inotify, read by a
    thread: a folder is watched as soon as it appears, then scanned; a lower bound if one comes and goes
    before its watch is in place."""

    IN_MOVED_TO, IN_CREATE, IN_Q_OVERFLOW, IN_ISDIR = 0x80, 0x100, 0x4000, 0x40000000
    SKIP = {"data", "_transactions", "_deletions", "_indices"}  # many files, no manifests

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.seen: dict[str, int] = {}
        self.overflow = False
        libc = ctypes.CDLL(None, use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.watches: dict[int, str] = {}
        self._watch(os.path.dirname(self.root), scan=False)  # the output does not exist yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _watch(self, path: str, scan: bool = True) -> None:
        wd = self._add_watch(self.fd, os.fsencode(path), self.IN_CREATE | self.IN_MOVED_TO)
        if wd < 0:
            return  # gone already
        self.watches[wd] = path
        if scan:  # what appeared before the watch did
            try:
                entries = list(os.scandir(path))
            except OSError:
                return
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in self.SKIP:
                        self._watch(entry.path)
                else:
                    self._note(entry.path)

    def _note(self, path: str) -> None:
        folder, name = os.path.split(path)
        stem = name[: -len(".manifest")]
        if os.path.basename(folder) == "_versions" and name.endswith(".manifest") and stem.isdigit():
            n = int(stem)
            version = (2**64 - 1 - n) if n >= 2**63 else n  # lance's V2 naming counts down from u64::MAX
            table = os.path.relpath(os.path.dirname(folder), self.root)
            self.seen[table] = max(self.seen.get(table, 0), version)

    def _read(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.fd], [], [], 0.05)[0]:
                continue
            data, at = os.read(self.fd, 1 << 16), 0
            while at < len(data):
                wd, mask, _, size = struct.unpack_from("iIII", data, at)
                name = data[at + 16 : at + 16 + size].rstrip(b"\0").decode(errors="replace")
                at += 16 + size
                if mask & self.IN_Q_OVERFLOW:
                    self.overflow = True
                if wd not in self.watches or not name:
                    continue
                path = os.path.join(self.watches[wd], name)
                if os.path.dirname(self.root) == self.watches[wd] and path != self.root:
                    continue  # the work folder: only the output matters
                if mask & self.IN_ISDIR:
                    if name not in self.SKIP:
                        self._watch(path)
                else:
                    self._note(path)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.fd)
        if os.path.isdir(self.root):  # the tables left: their newest manifests, in case an event was missed
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if d not in self.SKIP]
                for name in filenames:
                    self._note(os.path.join(dirpath, name))

    def total(self) -> int:
        return sum(self.seen.values())


# ---------------------------------------------------------------------------------------------- stages


def encode(images: str, features: str, log_dir: str, batch: int, timeout: float | None) -> dict:
    shutil.rmtree(features, ignore_errors=True)
    peak_file = os.path.join(log_dir, "driver_peak_kb")
    if os.path.exists(peak_file):
        os.remove(peak_file)
    cmd = [sys.executable, "-c", DRIVER, "--input", images, "--output", features, "--encoder", "tiny-vae",
           "--encoder", "tiny-dino", "--resolution", "32", "--device", "cpu", "--batch-size", str(batch)]
    watch = CommitWatch(features)
    try:
        result = run_watched(cmd, log_dir, env={**os.environ, PEAK_FILE_ENV: peak_file}, timeout=timeout)
    finally:
        watch.stop()
    result["cmd"] = "lumos-encode " + " ".join(cmd[3:])
    result["commits_seen"] = watch.total()
    if watch.overflow:
        result["err_tail"] += "\n(inotify queue overflowed: commits is a lower bound)"
    result["tables_seen"] = dict(watch.seen)
    try:
        pid, kb = map(int, open(peak_file).read().split())
        at_exit = kb if pid == result["pid"] else None
    except (OSError, ValueError):  # no atexit (killed)
        at_exit = None
    # The same high-water mark read two ways (at exit, and polled while it ran): the larger.
    result["driver_peak_kb"] = max(at_exit or 0, result["main_peak_kb"]) or None
    with open(os.path.join(log_dir, "stdout.txt"), errors="replace") as f:
        result["summary"] = f.read().strip()
    result["version"] = result["versions_kept"] = None
    if result["rc"] == 0:
        try:
            ds = lance.dataset(features)
            result["version"], result["versions_kept"] = ds.version, len(ds.versions())
            result["feature_rows"] = ds.count_rows()
        except Exception as e:  # noqa: BLE001  a benchmark reports, it does not stop
            result["err_tail"] += f"\n(reading the features table: {e})"
    return result


def train(features: str, run: str, log_dir: str, batch: int, timeout: float | None) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "lumos.generation.train_cli", "i2i", "--data", features, "--output", run,
           "--model", "DiT-T/2", "--latents", "tiny-vae", "--condition", "tiny-dino", "--steps", "1",
           "--batch-size", str(batch), "--precision", "fp32", "--workers", "1", "--log-every", "1"]
    first = {}

    def first_step(elapsed: float) -> None:
        path = os.path.join(run, "metrics.jsonl")
        if "s" not in first and os.path.exists(path):
            with open(path, errors="replace") as f:
                for line in f:
                    try:
                        if json.loads(line).get("step", 0) >= 1:
                            first["s"] = elapsed
                            return
                    except (ValueError, AttributeError):
                        pass

    result = run_watched(cmd, log_dir, tree=True, on_poll=first_step, timeout=timeout)
    result["cmd"] = "lumos-train " + " ".join(cmd[3:])
    result["first_step_s"] = first.get("s") if result["rc"] == 0 else None
    return result


# ---------------------------------------------------------------------------------------------- report


def _mb(kb):
    return None if not kb else kb * 1024 / 1e6


def _fmt(x, spec):
    """`x` formatted by `spec`, or "-" right-aligned to the spec's width when there is no value."""
    width = int(re.match(r"\D*(\d*)", spec).group(1) or 0)
    return "-".rjust(width) if x is None else format(x, spec)


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def report(sizes: list[dict]) -> None:
    head = (f"{'':6} {'rows':>9} {'frags':>6} {'enc rows/s':>10} {'driver MB':>10} {'version':>8} "
            f"{'kept':>5} {'commits':>8} {'1st step s':>10} {'train MB max':>12} {'(main)':>8} {'procs':>5}")
    print(head)
    print("-" * len(head))
    for s in sizes:
        e, t = s["encode"], s.get("train") or {}
        print(f"{s['label']:6} {s['rows']:>9} {s['fragments']:>6} {_fmt(s.get('rows_per_s'), '10.1f')} "
              f"{_fmt(_mb(e.get('driver_peak_kb')), '10.0f')} {_fmt(e.get('version'), '>8')} "
              f"{_fmt(e.get('versions_kept'), '>5')} {_fmt(e.get('commits_seen'), '>8')} "
              f"{_fmt(t.get('first_step_s'), '10.1f')} "
              f"{_fmt(_mb(t.get('max_peak_kb')) if t.get('rc') == 0 else None, '12.0f')} "
              f"{_fmt(_mb(t.get('main_peak_kb')) if t.get('rc') == 0 else None, '8.0f')} "
              f"{_fmt(t.get('processes') if t else None, '>5')}")
    small, large = sizes
    r = {
        "rows/s": _ratio(large.get("rows_per_s"), small.get("rows_per_s")),
        "driver": _ratio(large["encode"].get("driver_peak_kb") if large["encode"]["rc"] == 0 else None,
                         small["encode"].get("driver_peak_kb") if small["encode"]["rc"] == 0 else None),
        "commits": _ratio(large["encode"].get("commits_seen"), small["encode"].get("commits_seen")),
        "first": _ratio((large.get("train") or {}).get("first_step_s"), (small.get("train") or {}).get("first_step_s")),
        "train": _ratio(*[(s.get("train") or {}).get("max_peak_kb") if (s.get("train") or {}).get("rc") == 0
                          else None for s in (large, small)]),
    }
    print(f"{'ratio':6} {_ratio(large['rows'], small['rows']):>9.0f} "
          f"{_fmt(_ratio(large['fragments'], small['fragments']), '>6.0f')} {_fmt(r['rows/s'], '10.2f')} "
          f"{_fmt(r['driver'], '10.2f')} {'':>8} {'':>5} {_fmt(r['commits'], '8.2f')} {_fmt(r['first'], '10.2f')} "
          f"{_fmt(r['train'], '12.2f')}")
    print("driver MB: the lumos-encode process's own peak RSS (Ray workers not counted); version: the features\n"
          "table's version number = its commits; kept: versions left; commits: to every Lance table under the\n"
          "output, staging included (inotify; a lower bound); 1st step s: from process start to the step-1 row\n"
          "of metrics.jsonl; train MB: peak RSS of the largest process of lumos-train's tree (main: its main)")

    large_driver = _mb(large["encode"].get("driver_peak_kb")) if large["encode"]["rc"] == 0 else None
    checks = [
        ("encode rows/s ratio >= 0.8", r["rows/s"], r["rows/s"] is not None and r["rows/s"] >= 0.8),
        ("driver peak RSS ratio <= 1.3", r["driver"], r["driver"] is not None and r["driver"] <= 1.3),
        ("driver peak RSS at 30·N < 2 GB", large_driver, large_driver is not None and large_driver < 2000),
        ("trainer time-to-first-step ratio <= 2", r["first"], r["first"] is not None and r["first"] <= 2),
        ("trainer per-process peak RSS ratio <= 1.3", r["train"], r["train"] is not None and r["train"] <= 1.3),
    ]
    print("\ntargets (issue 12):")
    for name, value, ok in checks:
        verdict = "n/a (a command failed)" if value is None else ("PASS" if ok else "FAIL")
        print(f"  {name:45} {_fmt(value, '8.2f')}  {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="N: rows of the small table (the large: 30·N)")
    parser.add_argument("--rows-per-fragment", type=int, default=1_000)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lumos-bench-scale"),
                        help="Folder for the cached images tables, features, runs and logs")
    parser.add_argument("--image-size", type=int, default=48, help="Side of the synthetic JPEGs (px)")
    parser.add_argument("--encode-batch", type=int, default=32, help="lumos-encode --batch-size")
    parser.add_argument("--train-batch", type=int, default=8, help="lumos-train --batch-size")
    parser.add_argument("--timeout", type=float, default=None, help="Seconds before a command is killed")
    args = parser.parse_args()
    if args.rows < 1 or args.rows_per_fragment < 1:
        parser.error("--rows and --rows-per-fragment must be >= 1")
    os.makedirs(args.work, exist_ok=True)
    print(f"lumos bench/scale: N={args.rows}, 30·N={SCALE * args.rows}, {args.rows_per_fragment} rows a "
          f"fragment, {args.image_size}px JPEGs; {os.cpu_count()} CPUs; pylance {lance.__version__}; work "
          f"{args.work}", flush=True)

    sizes = []
    for label, rows in (("N", args.rows), ("30·N", SCALE * args.rows)):
        t0 = time.perf_counter()
        images = images_table(args.work, rows, args.rows_per_fragment, args.image_size)
        fragments = len(lance.dataset(images).get_fragments())
        print(f"[{label}] images table {images}: {rows} rows, {fragments} fragments "
              f"(ready in {time.perf_counter() - t0:.1f} s)", flush=True)
        logs = os.path.join(args.work, "logs", f"{rows}-{args.rows_per_fragment}")
        os.makedirs(os.path.join(logs, "encode"), exist_ok=True)
        os.makedirs(os.path.join(logs, "train"), exist_ok=True)
        features = os.path.join(args.work, f"features-{rows}-{args.rows_per_fragment}.lance")
        e = encode(images, features, os.path.join(logs, "encode"), args.encode_batch, args.timeout)
        size = {"label": label, "rows": rows, "fragments": fragments, "encode": e,
                "rows_per_s": rows / e["wall_s"] if e["rc"] == 0 else None}
        print(f"[{label}] {e['cmd']}\n    rc {e['rc']}, {e['wall_s']:.1f} s; features version {e['version']}, "
              f"commits seen {e['tables_seen']}", flush=True)
        if e["summary"]:
            print(_indent(e["summary"]), flush=True)
        if e["rc"] != 0:
            print(f"    FAILED{' (timed out)' if e['timed_out'] else ''}; stderr tail:\n"
                  + _indent(e["err_tail"]), flush=True)
        elif e.get("feature_rows") != rows:
            print(f"    note: the features table has {e.get('feature_rows')} rows, not {rows}", flush=True)
        if e["rc"] == 0:
            run = os.path.join(args.work, f"run-{rows}-{args.rows_per_fragment}")
            t = train(features, run, os.path.join(logs, "train"), args.train_batch, args.timeout)
            size["train"] = t
            print(f"[{label}] {t['cmd']}\n    rc {t['rc']}, {t['wall_s']:.1f} s to exit, first step at "
                  f"{_fmt(t['first_step_s'], '.1f')} s; {t['processes']} processes", flush=True)
            if t["rc"] != 0:
                print(f"    FAILED{' (timed out)' if t['timed_out'] else ''}; stderr tail:\n"
                      + _indent(t["err_tail"]), flush=True)
            elif t["first_step_s"] is None:
                print("    note: no step-1 row seen in metrics.jsonl", flush=True)
        sizes.append(size)

    print()
    report(sizes)
    return 0


def _indent(text: str, lines: int = 25) -> str:
    return "\n".join("      " + line for line in text.rstrip().splitlines()[-lines:])


if __name__ == "__main__":
    sys.exit(main())
