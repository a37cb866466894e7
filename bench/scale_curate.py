"""Scale II: `lumos-curate` at M and 30·M metadata rows, N and 30·N images, as ratios, in one run.

Each command runs as the CLI in a process of its own (the Ray driver), on the small input, then on the one
30 times larger:

1. filter: `lumos-curate laion --no-download --min-aesthetic 5.0 --min-size 512` on M and 30·M rows
   (default 340,000 and 10,200,000) of LAION improved_aesthetics-shaped metadata (URL, TEXT, WIDTH, HEIGHT,
   similarity, punsafe, pwatermark, AESTHETIC_SCORE, hash) in parquet files of 1M rows. 10% of the rows
   repeat an earlier row's URL (half of those with another aesthetic score); sizes and scores are drawn so
   that about a quarter of the rows pass. What it writes is kept/*.parquet (no Lance table).
2. ingest: `lumos-curate sam --aesthetic-model none --min-aesthetic 0 --min-size 0 --image-size 64
   --commit-every 30` on N and 30·N images (default 10,000 and 300,000) in SA-1B tars of 10,000 images
   (sa_I.jpg + sa_I.json), and `lumos-curate imagenet` with the same options on train/nXXXXXXXX/*.JPEG. The
   images are 64×48 JPEGs, 64 distinct pictures cycled, each made unique by a JPEG comment naming its row,
   except that every tenth ImageNet file is byte-identical to the SAM image of its row.
3. mix: `lumos-curate mix --input SAM --input IMAGENET --take imagenet=0.8·N` on those tables (2·N rows in;
   the shared tenth are sha256 duplicates).
4. score: `lumos-curate score --aesthetic-model tiny` on a copy of the SAM table (N rows in).

For each: rows in, wall seconds, rows/s (rows in / wall seconds of the command), the driver's own peak RSS
(its VmHWM, read at exit and polled, as bench/scale.py does for lumos-encode; Ray's workers and daemons are
other processes and not counted), the fragments of the table it wrote (rows a fragment: mean, min-max) and
the Lance versions left. Targets (Scale II, acceptance 2), per command: rows/s ratio >= 0.8, driver peak RSS
ratio <= 1.3, driver peak RSS < 2 GB at 30x. A failed command is reported with its stderr tail; the exit
status is 0 either way (a benchmark, not a test).

Inputs are generated (vectorised) and cached in --work, so a re-run only runs the commands; each command's
output is removed before it runs. mix and score read the tables the ingest wrote in --work (with --only
mix or score, a previous run's).

    .venv/bin/python bench/scale_curate.py [--rows 10000] [--meta-rows 340000] [--work DIR]
                                           [--only filter,ingest,mix,score] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import functools
import glob
import io
import json
import os
import shutil
import struct
import sys
import tarfile
import tempfile
import time

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from scale import DRIVER, PEAK_FILE_ENV, SCALE, _fmt, _indent, _mb, _ratio, distinct_jpegs, run_watched

STEPS = ("filter", "ingest", "mix", "score")
META_FILE_ROWS = 1_000_000
TAR_IMAGES = 10_000
SYNSETS = 100
IMAGE_W, IMAGE_H = 64, 48
SHARED_EVERY = 10  # every tenth ImageNet image is the SAM image of its row, byte for byte
CURATE = DRIVER.replace("lumos-encode", "lumos-curate").replace("lumos.pipeline.cli", "lumos.curation.cli")
DUMP_OPTIONS = ["--aesthetic-model", "none", "--min-aesthetic", "0", "--min-size", "0", "--image-size", "64"]
TARGETS = (("rows/s ratio >= 0.8", "10.2f", lambda v: v >= 0.8),  # (name, format, test)
           ("driver RSS ratio <= 1.3", "10.2f", lambda v: v <= 1.3),
           ("driver MB at 30x < 2000", "10.0f", lambda v: v < 2000))


# ---------------------------------------------------------------------------------------------- inputs


def cached(path: str, make) -> str:
    """`path`, made by `make(folder)` in a temporary folder renamed into place when absent."""
    if not os.path.isdir(path):
        tmp = path + ".making"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        make(tmp)
        os.rename(tmp, path)
    return path


def laion_metadata(folder: str, rows: int, seed: int = 0) -> None:
    """`rows` LAION improved_aesthetics rows in files of META_FILE_ROWS; 10% repeat an earlier row's URL."""
    rng = np.random.default_rng(seed)
    repeat = np.zeros(rows, bool)
    repeat[rng.choice(np.arange(1, rows), rows // 10, replace=False)] = True
    url_of = np.cumsum(~repeat) - 1  # a new URL per row, numbered in order, or one of those seen before it:
    url_of[repeat] = (rng.random(int(repeat.sum())) * (url_of[repeat] + 1)).astype(np.int64)
    urls = rows - int(repeat.sum())
    side, aspect = rng.lognormal(np.log(560), 0.45, urls), rng.lognormal(0, 0.3, urls)
    per_url = {  # what a repeated URL repeats (the same image); its aesthetic score may differ
        "WIDTH": np.maximum(np.rint(side * np.sqrt(aspect)), 1),  # double, as in LAION's files
        "HEIGHT": np.maximum(np.rint(side / np.sqrt(aspect)), 1),
        "similarity": rng.uniform(0.28, 0.4, urls),
        "punsafe": rng.beta(1, 20, urls).astype(np.float32),
        "pwatermark": rng.beta(1, 6, urls).astype(np.float32),
        "AESTHETIC_SCORE": rng.normal(5.1, 0.55, urls).astype(np.float32),
        "hash": rng.integers(-2**63, 2**63 - 1, urls, dtype=np.int64),
        "caption": rng.integers(0, 1000, urls),
    }
    other_score = repeat & (rng.random(rows) < 0.5)
    no_score = rng.random(rows) < 0.001  # NaN: aesthetic_missing
    hosts = pa.array([f"https://images{i}.example-photos.com/uploads/" for i in range(50)])
    captions = pa.array([f"a photo of {w} number {i}, high resolution" for i, w in
                         enumerate(["a beach", "a cat", "mountains", "a city street", "a bowl of fruit"] * 200)])
    for start in range(0, rows, META_FILE_ROWS):
        u = url_of[start : start + META_FILE_ROWS]
        n = len(u)
        score = per_url["AESTHETIC_SCORE"][u]
        again = other_score[start : start + n]
        score[again] = rng.normal(5.1, 0.55, int(again.sum()))
        score[no_score[start : start + n]] = np.nan
        table = pa.table({
            "URL": pc.binary_join_element_wise(hosts.take(pa.array(u % 50)), pa.array(u).cast(pa.string()),
                                               "/original.jpg", ""),
            "TEXT": captions.take(pa.array(per_url["caption"][u])),
            **{name: pa.array(per_url[name][u]) for name in ("WIDTH", "HEIGHT", "similarity", "punsafe",
                                                             "pwatermark")},
            "AESTHETIC_SCORE": pa.array(score),
            "hash": pa.array(per_url["hash"][u]),
        })
        pq.write_table(table, os.path.join(folder, f"part-{start // META_FILE_ROWS:05d}.parquet"),
                       row_group_size=128 * 1024)


@functools.cache
def jpeg_pool() -> list[bytes]:
    """bench/scale.py's seeded pictures, cropped to IMAGE_W×IMAGE_H."""
    out = []
    for data in distinct_jpegs(IMAGE_W):
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).crop((0, 0, IMAGE_W, IMAGE_H)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def tagged(jpeg: bytes, tag: str) -> bytes:
    """`jpeg` with a comment segment (COM) holding `tag` after its start marker: other bytes, same pixels."""
    payload = tag.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def sam_image(i: int) -> bytes:
    return tagged(jpeg_pool()[i % len(jpeg_pool())], f"sam {i}")


def imagenet_image(i: int) -> bytes:
    return sam_image(i) if i % SHARED_EVERY == 0 else tagged(jpeg_pool()[i % len(jpeg_pool())], f"imagenet {i}")


def sam_tars(folder: str, rows: int) -> None:
    for start in range(0, rows, TAR_IMAGES):
        with tarfile.open(os.path.join(folder, f"sa_{start // TAR_IMAGES:06d}.tar"), "w") as tar:
            for i in range(start, min(start + TAR_IMAGES, rows)):
                sidecar = {"image": {"image_id": i, "width": IMAGE_W, "height": IMAGE_H, "file_name": f"sa_{i}.jpg"},
                           "annotations": []}
                for name, data in ((f"sa_{i}.jpg", sam_image(i)), (f"sa_{i}.json", json.dumps(sidecar).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def imagenet_folder(folder: str, rows: int) -> None:
    synsets = [f"n{1440764 + k:08d}" for k in range(SYNSETS)]
    for synset in synsets:
        os.makedirs(os.path.join(folder, "train", synset))
    for i in range(rows):
        synset = synsets[i % SYNSETS]
        with open(os.path.join(folder, "train", synset, f"{synset}_{i}.JPEG"), "wb") as f:
            f.write(imagenet_image(i))


# ---------------------------------------------------------------------------------------------- commands


def run_cli(name: str, rows: int, args: list[str], layout, log_dir: str, timeout: float | None) -> dict:
    """`lumos-curate ARGS` as its own process; its wall time, driver peak RSS and the layout of what it wrote."""
    os.makedirs(log_dir, exist_ok=True)
    peak_file = os.path.join(log_dir, "driver_peak_kb")
    if os.path.exists(peak_file):
        os.remove(peak_file)
    r = run_watched([sys.executable, "-c", CURATE, *args], log_dir, env={**os.environ, PEAK_FILE_ENV: peak_file},
                    timeout=timeout)
    try:
        pid, kb = map(int, open(peak_file).read().split())
        at_exit = kb if pid == r["pid"] else 0
    except (OSError, ValueError):  # no atexit (killed)
        at_exit = 0
    ok = r["rc"] == 0
    r.update(name=name, rows=rows, cmd="lumos-curate " + " ".join(args), fragments=None, versions=None,
             driver_kb=(max(at_exit, r["main_peak_kb"]) or None) if ok else None,
             rows_per_s=rows / r["wall_s"] if ok else None)
    with open(os.path.join(log_dir, "stdout.txt"), errors="replace") as f:
        summary = f.read().strip()
    print(f"  {r['cmd']}\n    rc {r['rc']}, {r['wall_s']:.1f} s" + ("\n" + _indent(summary) if summary else ""),
          flush=True)
    if not ok:
        print(f"    FAILED{' (timed out)' if r['timed_out'] else ''}; stderr tail:\n" + _indent(r["err_tail"]),
              flush=True)
        return r
    try:
        r["fragments"], r["versions"] = layout()
    except Exception as e:  # noqa: BLE001  a benchmark reports, it does not stop
        print(f"    note: cannot read what it wrote: {e}", flush=True)
    return r


def skipped(name: str, rows: int, why: str) -> dict:
    print(f"  {name}: skipped ({why})", flush=True)
    return {"name": name, "rows": rows, "rc": None, "wall_s": None, "rows_per_s": None, "driver_kb": None,
            "fragments": None, "versions": None}


def lance_layout(uri: str):
    ds = lance.dataset(uri)
    return [f.count_rows() for f in ds.get_fragments()], len(ds.versions())


def parquet_layout(folder: str):
    return [pq.read_metadata(p).num_rows for p in sorted(glob.glob(os.path.join(folder, "*.parquet")))], None


def one_size(label: str, meta_rows: int, rows: int, steps: set, work: str, commit: list[str],
             timeout: float | None) -> list[dict]:
    def out(name: str) -> str:
        return os.path.join(work, "out", f"{name}-{meta_rows if name == 'filter' else rows}")

    def run(name, n, args, layout, output):
        shutil.rmtree(output, ignore_errors=True)
        return run_cli(name, n, args, layout, os.path.join(work, "logs", os.path.basename(output)), timeout)

    results = []
    sam_table, imagenet_table = (os.path.join(out(n), "images.lance") for n in ("sam", "imagenet"))
    if "filter" in steps:
        meta = cached(os.path.join(work, f"laion-v1-{meta_rows}"), lambda d: laion_metadata(d, meta_rows))
        results.append(run("filter", meta_rows, ["laion", "--input", meta, "--output", out("filter"),
                                                  "--no-download", "--min-aesthetic", "5.0", "--min-size", "512"],
                           lambda: parquet_layout(os.path.join(out("filter"), "kept")), out("filter")))
    if "ingest" in steps:
        tars = cached(os.path.join(work, f"sam-v1-{rows}"), lambda d: sam_tars(d, rows))
        folder = cached(os.path.join(work, f"imagenet-v1-{rows}"), lambda d: imagenet_folder(d, rows))
        for name, source, table in (("sam", tars, sam_table), ("imagenet", folder, imagenet_table)):
            results.append(run(name, rows, [name, "--input", source, "--output", out(name), *DUMP_OPTIONS, *commit],
                               lambda t=table: lance_layout(t), out(name)))
    # a finished ingest (this run's or an earlier one's) has its stats.json
    missing = [out(n) for n in ("sam", "imagenet") if not os.path.exists(os.path.join(out(n), "stats.json"))]
    if "mix" in steps:
        results.append(skipped("mix", 2 * rows, f"no finished ingest in {missing[0]}") if missing else
                       run("mix", 2 * rows, ["mix", "--input", sam_table, "--input", imagenet_table, "--output",
                                             out("mix"), "--take", f"imagenet={int(0.8 * rows)}"],
                           lambda: lance_layout(os.path.join(out("mix"), "images.lance")), out("mix")))
    if "score" in steps:
        if out("sam") in missing:
            results.append(skipped("score", rows, f"no finished ingest in {out('sam')}"))
        else:
            copy = os.path.join(out("score"), "images.lance")
            shutil.rmtree(out("score"), ignore_errors=True)
            shutil.copytree(sam_table, copy)
            results.append(run_cli("score", rows, ["score", "--input", copy, "--aesthetic-model", "tiny"],
                                   lambda: lance_layout(copy), os.path.join(work, "logs", f"score-{rows}"), timeout))
    for r in results:
        r["size"] = label.replace("N", "M") if r["name"] == "filter" else label
    return results


# ---------------------------------------------------------------------------------------------- report


def _frags(counts):
    if not counts:
        return _fmt(None, ">24"), _fmt(None, ">6")
    return f"{np.mean(counts):.0f} ({min(counts)}-{max(counts)})".rjust(24), f"{len(counts):>6}"


def report(small: list[dict], large: list[dict]) -> None:
    head = (f"{'command':9} {'size':5} {'rows in':>9} {'wall s':>8} {'rows/s':>10} {'driver MB':>10} {'frags':>6} "
            f"{'rows/frag mean (min-max)':>24} {'versions':>8}")
    print(head + "\n" + "-" * len(head))
    pairs = [(s, next((b for b in large if b["name"] == s["name"]), None)) for s in small]
    for s, big in pairs:
        for r in (s, big) if big else (s,):
            rows_frag, frags = _frags(r["fragments"])
            print(f"{r['name']:9} {r['size']:5} {r['rows']:>9} {_fmt(r['wall_s'], '8.1f')} "
                  f"{_fmt(r['rows_per_s'], '10.0f')} {_fmt(_mb(r['driver_kb']), '10.0f')} {frags} {rows_frag} "
                  f"{_fmt(r['versions'], '>8')}")
    print("driver MB: the CLI process's own peak RSS (Ray workers not counted); frags: fragments of the table it\n"
          "wrote (filter: the kept/ parquet files); versions: Lance versions left (filter: no Lance table)")
    print(f"\ntargets (Scale II, acceptance 2), large/small:\n  {'':9}" + "".join(f"{t[0]:>30}" for t in TARGETS))
    for s, big in pairs:
        if big is None:
            continue
        values = (_ratio(big["rows_per_s"], s["rows_per_s"]), _ratio(big["driver_kb"], s["driver_kb"]),
                  _mb(big["driver_kb"]))
        cells = [f"{_fmt(value, spec)}  {'n/a' if value is None else 'PASS' if ok(value) else 'FAIL':4}"
                 for value, (_, spec, ok) in zip(values, TARGETS)]
        print(f"  {s['name']:9}" + "".join(c.rjust(30) for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="N: images of each small dump (the large: 30·N)")
    parser.add_argument("--meta-rows", type=int, default=340_000,
                        help="M: rows of the small metadata (the large: 30·M)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lumos-bench-scale-curate"),
                        help="Folder for the cached inputs, the outputs and the logs")
    parser.add_argument("--only", default=",".join(STEPS), help="Comma-separated steps: " + ",".join(STEPS))
    parser.add_argument("--timeout", type=float, default=None, help="Seconds before a command is killed")
    args = parser.parse_args()
    steps = set(args.only.split(","))
    if not steps <= set(STEPS):
        parser.error(f"--only {args.only}: choose from {','.join(STEPS)}")
    if args.rows < SHARED_EVERY or args.meta_rows < 10:
        parser.error("--rows and --meta-rows must be >= 10")
    commit = ["--commit-every", "30"]
    os.makedirs(args.work, exist_ok=True)
    print(f"lumos bench/scale_curate: M={args.meta_rows}, N={args.rows}, x{SCALE}; {os.cpu_count()} CPUs; "
          f"pylance {lance.__version__}; work {args.work}", flush=True)
    sizes = []
    for label, factor in (("N", 1), (f"{SCALE}·N", SCALE)):
        print(f"[{label}]", flush=True)
        t0 = time.perf_counter()
        sizes.append(one_size(label, factor * args.meta_rows, factor * args.rows, steps, args.work, commit,
                              args.timeout))
        print(f"[{label}] done in {time.perf_counter() - t0:.1f} s", flush=True)
    print()
    report(*sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
