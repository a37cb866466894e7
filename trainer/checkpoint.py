"""Checkpoints: RUN/checkpoints/step-NNNNNNN/ holding

    model.safetensors, ema.safetensors   the weights (LumosDiT state dicts)
    state.pt                             optimizer, lr schedule, grad scaler, step: tensors and plain values
    rng-rank{r}.pt                       each DDP rank's training generator (noise, timesteps, dropout)
    config.json                          the run's full configuration, provenance included
    manifest.json                        every other file's size and sha256, written last

written into a staging folder, each file fsynced, then the folder renamed into place and its parent fsynced:
a reader never sees half a checkpoint, and a power loss cannot publish one whose files are still in the page
cache. The last `keep` are kept. Everything loads without unpickling arbitrary objects (safetensors,
weights_only=True). `pick_resume` verifies checkpoints against their manifests, newest first, and moves a
damaged one aside to checkpoints/damaged-step-NNNNNNN (never listed, never rotated away: left to inspect).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file

from lumos.floor.errors import UserError

PATTERN = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
REQUIRED = ("model.safetensors", "ema.safetensors", "state.pt", "config.json")  # plus rng-rank{r}.pt per rank


def checkpoints_dir(run: str) -> str:
    return os.path.join(run, "checkpoints")


def list_checkpoints(run: str) -> list[tuple[int, str]]:
    """(step, path) of the published checkpoints of a run, oldest first (damaged ones moved aside are not)."""
    root = checkpoints_dir(run)
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root) if (m := PATTERN.match(name))]
    return sorted(found)


def latest(run_or_checkpoint: str) -> str | None:
    """A checkpoint folder itself, or the newest checkpoint of a run folder."""
    if os.path.isfile(os.path.join(run_or_checkpoint, "model.safetensors")):
        return run_or_checkpoint
    found = list_checkpoints(run_or_checkpoint)
    return found[-1][1] if found else None


def staging_dir(run: str, step: int) -> str:
    return os.path.join(checkpoints_dir(run), f".tmp-step-{step:07d}")


# --- writing ---
def _fsync(path: str) -> None:
    """Flush a file's (or a folder's entries') data to the disk: os.replace alone orders nothing on a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_rng(path: str, rank: int, generator: torch.Generator) -> None:
    """Every rank, into the staging folder: the state of its training generator."""
    os.makedirs(path, exist_ok=True)
    file = os.path.join(path, f"rng-rank{rank}.pt")
    torch.save({"generator": generator.get_state()}, file)
    _fsync(file)


def write_main_state(path: str, model, ema, optimizer, scheduler, scaler, step: int, config: dict) -> None:
    """Rank 0, into the staging folder: weights, optimizer, lr schedule, scaler, step and config."""
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(path, "model.safetensors"))
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, os.path.join(path, "ema.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "step": step},
               os.path.join(path, "state.pt"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    for name in ("model.safetensors", "ema.safetensors", "state.pt", "config.json"):
        _fsync(os.path.join(path, name))


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(path: str) -> None:
    """Rank 0, last into the staging folder (every rank's files are there): each file's size and sha256.
    Hashing re-reads the checkpoint from the page cache (~1 s a GB): cheap next to the steps between saves."""
    files = {name: {"size": os.path.getsize(os.path.join(path, name)), "sha256": sha256(os.path.join(path, name))}
             for name in sorted(os.listdir(path)) if name != MANIFEST}
    file = os.path.join(path, MANIFEST)
    with open(file, "w") as f:
        json.dump({"files": files}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def publish(run: str, step: int, keep: int) -> str:
    """Rank 0, after every rank wrote: manifest, fsync, rename the staging folder into place, drop the oldest."""
    root, staging = checkpoints_dir(run), staging_dir(run, step)
    write_manifest(staging)
    _fsync(staging)  # the folder's entries (every rank's file) before the rename that publishes them
    final = os.path.join(root, f"step-{step:07d}")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    _fsync(root)  # the rename itself
    for _, old in list_checkpoints(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# --- verifying ---
def damage(path: str) -> str | None:
    """Why this checkpoint cannot be resumed from (a few words), or None when it is intact."""
    if not os.path.exists(os.path.join(path, MANIFEST)):
        return _damage_without_manifest(path)
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            files = json.load(f)["files"]
        written = {name: (int(v["size"]), str(v["sha256"])) for name, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"{MANIFEST} is unreadable ({type(err).__name__})"
    lacking = [name for name in REQUIRED if name not in written]
    if lacking:
        return f"{MANIFEST} lists no {', '.join(lacking)}"
    for name, (size, _) in written.items():  # sizes first: a truncated file is found without reading anything
        found = _size(os.path.join(path, name))
        if found is None:
            return f"{name} is missing"
        if found != size:
            what = "empty" if found == 0 else "truncated" if found < size else "longer than written"
            return f"{name} is {what} ({found} bytes, {size} written)"
    for name, (_, sha) in written.items():
        if sha256(os.path.join(path, name)) != sha:
            return f"{name} does not match its sha256 in {MANIFEST}"
    return None


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path) if os.path.isfile(path) else None
    except OSError:
        return None


def _damage_without_manifest(path: str) -> str | None:
    """A checkpoint written before manifests existed (or whose manifest was removed): load every file."""
    try:
        world = int(read_config(path).get("world_size", 1))
    except (OSError, ValueError, AttributeError) as err:
        return f"config.json is unreadable ({type(err).__name__})"
    for name in (*REQUIRED[:-1], *(f"rng-rank{r}.pt" for r in range(world))):
        file = os.path.join(path, name)
        size = _size(file)
        if size is None:
            return f"{name} is missing"
        if size == 0:
            return f"{name} is empty"
        try:
            load_file(file) if name.endswith(".safetensors") else torch.load(file, map_location="cpu",
                                                                             weights_only=True)
        except Exception as err:  # noqa: BLE001 - whatever the loader says, the file cannot be resumed from
            first = (str(err).splitlines() or [""])[0][:120]
            return f"{name} is unreadable ({type(err).__name__}: {first})"
    return None


def _aside(path: str) -> str:
    """Move a damaged checkpoint out of the listing (step-N no longer names it), keeping it to inspect."""
    root, name = os.path.split(path)
    target, n = os.path.join(root, f"damaged-{name}"), 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(root, f"damaged-{name}-{n}")
    os.replace(path, target)
    _fsync(root)
    return target


def pick_resume(run: str) -> tuple[str, str | None]:
    """The newest intact checkpoint of `run`, and one line about the damaged newer ones (moved aside), if any.
    Only rank 0 calls this (it moves folders); the others receive its answer."""
    root = checkpoints_dir(run)
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.startswith(".tmp-step-"):  # a save killed before its rename: never published, never used
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    found = list_checkpoints(run)
    if not found:
        raise UserError(f"--resume: {run} holds no checkpoint")
    damaged = []
    for _, path in reversed(found):
        why = damage(path)
        if why is None:
            break
        damaged.append((path, why))
    else:
        listed = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in damaged)
        raise UserError(f"--resume: no intact checkpoint in {root} ({listed}); start a new run in another --output")
    if not damaged:
        return path, None
    moved = [(os.path.basename(p), why, os.path.basename(_aside(p))) for p, why in damaged]
    said = "; ".join(f"{name} is damaged: {why}, moved to checkpoints/{to}" for name, why, to in moved)
    return path, f"--resume: {said}; resuming from {os.path.basename(path)}"


# --- reading ---
def read_config(path: str) -> dict:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def read_weights(path: str, which: str = "model") -> dict:
    return load_file(os.path.join(path, f"{which}.safetensors"))


def read_state(path: str) -> dict:
    return torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)


def read_rng(path: str, rank: int) -> torch.Tensor:
    return torch.load(os.path.join(path, f"rng-rank{rank}.pt"), map_location="cpu", weights_only=True)["generator"]
