"""`lumos-train`: the DiT trained from cached features only. One process, or one per GPU under torchrun.

    features.lance ─ FeatureStream (DataLoader workers, spawned) ─ z = (mean + std·ε)·0.18215,
    cond = L2-normalised DINO CLS (I2I) or T5 tokens + mask (T2I), 10% → null ─ ε-MSE at t ~ U[0, 1000)
    ─ AdamW (constant lr after warm-up), fp16 autocast + GradScaler, grad clip, EMA ─ checkpoints, metrics

No encoder is imported here: the features were made once by lumos-encode.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from dataclasses import asdict

import numpy as np
import torch

from lumos.floor.errors import UserError
from lumos.floor.output_lock import output_lock
from lumos.schemas import features
from lumos.trainer import checkpoint as ckpt
from lumos.trainer.config import TrainConfig, flat_record, to_toml  # noqa: F401 - TrainConfig: the API's
from lumos.trainer.buckets import BucketOrder
from lumos.trainer.data import EpochOrder, FeatureColumns, FeatureStream, counts_path, open_positions, positions_file
from lumos.trainer.diffusion import Diffusion
from lumos.trainer.feature_api import prepare
from lumos.trainer.held_back import SampleGrid, hold_back, read_held_back
from lumos.trainer.metrics import MetricsLog, keep_until
from lumos.trainer.lumos_arch import T2I_NULL_TOKENS
from lumos.trainer.models import DIT_MODELS, LumosDiT, autocast

SCALING_FACTOR_KEY = "scaling_factor"
PROVENANCE_IGNORED = ("versions", "images")  # a library upgrade or a moved images table is the same features
# What a resumed run must share with its checkpoint (the data order and the model depend on them).
RUN_DEFINING = {"i2i": ("mode", "model", "latents", "condition", "condition_tokens", "batch_size", "global_batch",
                        "micro_conditions", "arch", "seed"),
                "t2i": ("mode", "model", "latents", "text", "caption", "caption_mix", "batch_size", "global_batch",
                        "micro_conditions", "arch", "seed")}
# What a run made before a setting existed was trained with.
DEFAULTS = {"condition_tokens": "cls", "global_batch": None, "caption_mix": 0.5, "eps": 1e-8,
            "micro_conditions": False, "arch": "pixart"}


def _process() -> tuple[int, int, torch.device]:
    """(world size, rank, device) of this process; under torchrun, joins the group (NCCL on GPUs, gloo on CPUs)."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
    if world > 1 and not torch.distributed.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return world, rank, device


def _from_rank0(value, world: int):
    """Rank 0's value on every rank: for what only rank 0 decides (the lock, the checkpoint to resume from)."""
    if world == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


class Run:
    """Everything a training process holds; built once, then `train()`."""

    def __init__(self, config: TrainConfig, say=print, sample_grid: SampleGrid | None = None):
        self.config = c = copy.deepcopy(config)  # its auto settings are made concrete below, not the caller's
        self.say, self.sample_grid_hook = say, sample_grid
        c.validate()
        self.world, self.rank, self.device = _process()
        cuda = self.device.type == "cuda"
        self.accumulation = accumulation_steps(c, self.world)

        import lance

        try:
            meta = features.str_metadata(lance.dataset(c.data.table).schema.metadata)
        except (ValueError, OSError) as err:
            raise UserError(f"--data {c.data.table} is not a Lance table: {str(err).splitlines()[0]}") from None
        self.columns, self.provenance = columns_and_provenance(c, meta)
        c.fit_machine(cuda)
        schema = lance.dataset(c.data.table).schema
        latent_shape = base_latent_shape(self.columns, schema)  # (4, H/8, W/8)
        if c.model.micro_conditions and latent_shape[-1] != 128:
            raise UserError(f"--micro-conditions: for 1024 px latents (128 latent cells a side), as PixArt-α's "
                            f"multi-scale model; {c.data.latents} has {latent_shape[-1]} (PixArtAlphaPipeline passes "
                            "them to 1024 px models only)")
        if c.model.micro_conditions and DIT_MODELS[c.model.size].hidden % 3:
            raise UserError(f"--micro-conditions: {c.model.size}'s width {DIT_MODELS[c.model.size].hidden} is not a "
                            "multiple of 3 (PixArt splits it between the size, the aspect ratio and their sum)")
        caption_channels = features.shape_of(schema.field(self.columns.cond))[-1]
        self.scaling = float(self.provenance["latents"].get(SCALING_FACTOR_KEY, 0.18215))

        self.resume_from = self._resume_point() if c.resume else None
        if not c.resume and ckpt.list_checkpoints(c.checkpoint.output):
            raise UserError(f"{c.checkpoint.output} already holds a run; pass --resume to continue it or pick another --output")
        if self.resume_from:
            saved = ckpt.read_config(self.resume_from)
            _same_provenance(saved["provenance"], self.provenance, self.resume_from)
            then, now = flat_record(saved["train"]), c.flat()
            changed = [k for k in RUN_DEFINING[c.mode] if then.get(k, DEFAULTS.get(k)) != now[k]]
            if _held_back(then) != _held_back(now):
                changed.append(f"held-back rows ({_held_back(then)} then, {_held_back(now)} now)")
            if saved["world_size"] != self.world:
                changed.append(f"world size ({saved['world_size']} processes then, {self.world} now)")
            if changed:
                raise UserError(f"--resume: {self.resume_from} was trained with other {', '.join(changed)}; "
                                "resume with the same settings (the data order depends on them)")
            then = {**{k: v for k, v in DEFAULTS.items() if k not in then}, **then}
            moved = {k: v for k, v in now.items()
                     if k not in RUN_DEFINING[c.mode] and k != "resume" and then.get(k, v) != v}
            if moved and self.rank == 0:
                say("--resume: in force from here: " + ", ".join(f"{k.replace('_', '-')} {v} (was {then[k]})"
                                                                  for k, v in sorted(moved.items())))

        torch.manual_seed(c.seed)
        self.model = LumosDiT(c.model.size, latent_shape[-1], latent_shape[0], caption_channels,
                              c.model.grad_checkpointing, micro_conditions=c.model.micro_conditions,
                              downsample=downsample(self.provenance["latents"], latent_shape), arch=c.model.arch,
                              null_tokens=null_tokens(c, schema, self.columns)).to(self.device)
        self.reinitialised: list[str] = []
        if c.checkpoint.init:
            self.reinitialised = self._load_init(c.checkpoint.init)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        if cuda and c.model.precision != "fp32":  # TF32 for what autocast leaves in fp32: not asked for exact fp32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        if c.model.compile:  # in place: the state dict keeps its names (checkpoints, EMA, export)
            self.model.transformer.compile()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.optim.lr, weight_decay=c.optim.weight_decay,
                                           eps=c.optim.eps, fused=cuda)  # fused: one kernel for all parameters on a GPU
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: min(1.0, (s + 1) / max(c.optim.warmup, 1)))
        self.scaler = torch.amp.GradScaler("cuda", enabled=c.model.precision == "fp16")
        # Every random draw of training (latent ε, t, noise, condition dropout) comes from this generator, per
        # rank, saved in checkpoints: nothing else (DataLoader seeding, libraries) can shift a resumed run.
        self.generator = torch.Generator(self.device).manual_seed(c.seed * 1000 + self.rank + 1)
        self.step = 0
        if self.resume_from:
            self._load_resume(self.resume_from)
        self.ddp = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)

        # The table version every process reads from here on, and its usable rows' positions: computed once
        # (rank 0, or found from an earlier start of this run), mapped read-only by every process.
        path, self.version, self.skipped = self._positions()
        positions = open_positions(path)
        if len(positions) == 0:
            raise UserError(f"--data {c.data.table}: no row has every column this run needs "
                            f"({', '.join(self.columns.names())})")
        self.held_back, self.grid, skip = None, None, None
        counts = np.load(counts_path(path)) if self.columns.bucket else None
        if c.sampling.sample_every:  # bucketed: from the largest bucket (one grid, one latent shape)
            start, end = (0, len(positions)) if counts is None else bucket_range(counts, int(np.argmax(counts)))
            skip, self.held_back = hold_back(positions[start:end], c.sampling.sample_rows, c.seed)
            skip = skip + start
        # a step's rows on this rank: batch_size × accumulation, in `accumulation` forward passes
        per_rank = c.data.batch_size * self.accumulation
        self.order = EpochOrder(positions, per_rank, self.world, self.rank, c.seed, skip=skip) if counts is None \
            else BucketOrder(positions, counts, per_rank, self.world, self.rank, c.seed, skip=skip)
        self.diffusion = Diffusion(device=self.device)

    # --- loading ---
    def _resume_point(self) -> str:
        """Rank 0 verifies the newest checkpoints (moving damaged ones aside) and every rank resumes from its pick."""
        answer = None
        if self.rank == 0:
            try:
                answer = ckpt.pick_resume(self.config.checkpoint.output)
            except UserError as err:
                answer = str(err)
        answer = _from_rank0(answer, self.world)
        if isinstance(answer, str):
            raise UserError(answer)
        path, damaged = answer
        if damaged and self.rank == 0:
            self.say(damaged)
        return path

    def _positions(self) -> tuple[str, int, int]:
        """Rank 0 finds or writes the positions file (the others wait in the broadcast); every rank gets
        (its path, the table version, how many rows are not usable), or rank 0's error."""
        answer = None
        if self.rank == 0:
            try:
                answer = positions_file(self.config.data.table, self.columns, self.config.checkpoint.output)
            except UserError as err:
                answer = str(err)
        answer = _from_rank0(answer, self.world)
        if isinstance(answer, str):
            raise UserError(answer)
        return answer

    def _load_init(self, init: str) -> list[str]:
        """T2I from I2I, or a T2I stage from the one before at a lower resolution: every weight whose name and
        shape fit is loaded (the EMA weights); the rest stay freshly initialised and are named: from I2I, the
        caption projection (768 → 4096 input) and the null token. The position embedding is no weight (a
        sin-cos table of the latent size, with PixArt's interpolation scale, max(latent size / 64, 1)), so
        a 256-px run starts a 512- or 1024-px one whole. The run must be of the same --arch, the latents must come
        from the same VAE and a condition from the same encoder made the same way (INIT_MAY_CHANGE says what may
        differ): the loaded weights were trained on those features."""
        path = ckpt.latest(init)
        if path is None:
            raise UserError(f"--init {init}: no checkpoint there")
        source = ckpt.read_config(path)
        arch = flat_record(source["train"]).get("arch", DEFAULTS["arch"])
        if arch != self.config.model.arch:  # the other model's weights would hardly fit: a fresh model, silently
            raise UserError(f"--init {init} is an --arch {arch} run; pass --arch {arch} (or a recipe's --config)")
        for role in ("latents", "condition"):
            then, now = (_same_meaning(p[role], role) for p in (source["provenance"], self.provenance))
            if role == "condition" and then.get("encoder") != now.get("encoder"):
                continue  # another condition (I2I → T2I): its projection starts fresh where the shapes differ
            if then != now:
                what = "latents" if role == "latents" else f"{now.get('encoder')} features"
                raise UserError(f"--init {init} was trained on other {what} than --data ({_differs(then, now)})")
        weights, own = ckpt.read_weights(path, "ema"), self.model.state_dict()
        fits = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
        self.model.load_state_dict(fits, strict=False)
        return sorted(k for k in own if k not in fits)

    def _load_resume(self, path: str) -> None:
        self.model.load_state_dict(ckpt.read_weights(path, "model"))
        self.ema.load_state_dict(ckpt.read_weights(path, "ema"))
        state = ckpt.read_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and self.scaler.is_enabled():  # fp16 then and now; a change of precision starts afresh
            self.scaler.load_state_dict(state["scaler"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.generator.set_state(ckpt.read_rng(path, self.rank))
        self._apply_settings()

    def _apply_settings(self) -> None:
        """The optimizer and the schedule follow this run's lr, warm-up, weight decay and eps, not the
        checkpoint's (its state_dict brings the old ones back): the run record then says what is in force."""
        c = self.config
        self.scheduler.base_lrs = [c.optim.lr for _ in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            group["initial_lr"] = c.optim.lr
            group["weight_decay"], group["eps"] = c.optim.weight_decay, c.optim.eps
            group["lr"] = c.optim.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # --- the loop ---
    def loader(self):
        from torch.utils.data import DataLoader

        stream = FeatureStream(self.config.data.table, self.columns, self.order, start=self.step,
                               with_ids=self.config.data.record_samples, version=self.version)
        workers = self.config.data.workers
        return iter(DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=self.device.type == "cuda",
                               multiprocessing_context="spawn" if workers else None,
                               persistent_workers=False, prefetch_factor=4 if workers else None))

    def train_step(self, batch: dict) -> torch.Tensor:
        c, dev, g = self.config, self.device, self.generator
        ready = prepare(batch, self.scaling, c.mode, g, dev)  # what feature_loader gives a user's own loop
        x0, cond, mask, weight = ready["x0"], ready["cond"], ready.get("mask"), ready["weight"]
        n = x0.shape[0]
        # every draw is made for the step's rows at once: accumulated passes see what one large batch would
        drop = torch.rand(n, device=dev, generator=g) < c.data.cond_dropout
        t = torch.randint(0, self.diffusion.steps, (n,), device=dev, generator=g)
        noise = torch.randn(x0.shape, device=dev, generator=g)
        xt = self.diffusion.q_sample(x0, t, noise)
        self.optimizer.zero_grad(set_to_none=True)
        total = weight.sum().clamp(min=1.0)  # the step's loss is the mean over all its rows, as one batch's
        loss = torch.zeros((), device=dev)
        vlb = torch.zeros((), device=dev) if c.model.arch == "lumos" else None
        starts = range(0, n, c.data.batch_size)
        channels = x0.shape[1]
        for k, start in enumerate(starts):
            part = slice(start, start + c.data.batch_size)
            last = k == len(starts) - 1
            with contextlib.nullcontext() if last or self.ddp is self.model else self.ddp.no_sync():
                with autocast(c.model.precision, dev):
                    out = self.ddp(xt[part], t[part], cond[part], None if mask is None else mask[part], drop[part])
                eps = out[:, :channels]
                per_sample = self.diffusion.per_sample_loss(eps, noise[part])
                if out.shape[1] > channels:  # learned variance: IDDPM's hybrid loss, ε held fixed in the bound
                    bound = self.diffusion.vlb(x0[part], xt[part], t[part], eps.detach(), out[:, channels:])
                    per_sample = per_sample + bound
                    vlb = vlb + (bound.detach() * weight[part]).sum() / total
                part_loss = (per_sample * weight[part]).sum() / total
                self.scaler.scale(part_loss).backward()
            loss = loss + part_loss.detach()
        self.scaler.unscale_(self.optimizer)
        if c.optim.grad_clip > 0:  # 0: no clipping
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        # EMA with diffusers EMAModel's warm-up: early weights (the random init) fade out in short runs too
        self.update_ema(min(c.optim.ema, (1 + self.step) / (10 + self.step)))
        self.last_vlb = vlb
        return loss.detach()

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """ema ← decay·ema + (1 − decay)·model, all parameters in one foreach call."""
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - decay)

    def train(self, say=None) -> dict:
        from tqdm import tqdm

        c, say = self.config, say or self.say
        main = self.rank == 0
        os.makedirs(c.checkpoint.output, exist_ok=True)  # every rank: each may write its own files before rank 0 is there
        if main:
            with open(os.path.join(c.checkpoint.output, "config.json"), "w") as f:
                json.dump(self.full_config(), f, indent=2, sort_keys=True)
            with open(os.path.join(c.checkpoint.output, "config.toml"), "w") as f:  # the resolved recipe
                f.write(to_toml(c))
            if self.reinitialised:
                say(f"--init: re-initialised (no weight of the same shape in the I2I model): {', '.join(self.reinitialised)}")
            say(f"{c.model.size}: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M parameters; "
                f"{self.order.count} rows ({self.skipped} skipped: no {self.columns.cond if c.mode == 't2i' else 'features'}), "
                f"{self.order.steps_per_epoch} steps an epoch on {self.world} rank(s); from step {self.step}")
        log = MetricsLog(c.checkpoint.output, main, c.checkpoint.tensorboard, start_step=self.step)
        records = None
        if c.data.record_samples:
            path = os.path.join(c.checkpoint.output, f"samples-rank{self.rank}.jsonl")
            keep_until(path, self.step)  # a resumed run: the killed run's steps after its checkpoint go
            records = open(path, "a")
        data = self.loader()
        bar = tqdm(total=c.optim.steps, initial=self.step, disable=not main, unit="step", dynamic_ncols=True)
        started, waited, window, bounds = time.perf_counter(), 0.0, [], []
        while self.step < c.optim.steps:
            t0 = time.perf_counter()
            batch = next(data)
            waited += time.perf_counter() - t0
            assert batch["step"] == self.step, (batch["step"], self.step)  # the data position is the step
            loss = self.train_step(batch)
            self.step += 1
            window.append(loss)
            if self.last_vlb is not None:  # --arch lumos: the loss's VLB part
                bounds.append(self.last_vlb)
            if records:
                records.write(json.dumps({"step": self.step, "epoch": batch["epoch"],
                                          "ids": [i for i, w in zip(batch["ids"], batch["weight"]) if w > 0]}) + "\n")
            if self.step % c.checkpoint.log_every == 0 or self.step == c.optim.steps:
                mean_loss = torch.stack([torch.stack(window).mean(), *([torch.stack(bounds).mean()] if bounds else [])])
                if self.world > 1:  # a device sync, once a log interval
                    torch.distributed.all_reduce(mean_loss)
                    mean_loss /= self.world
                elapsed = time.perf_counter() - started
                vlb = {"vlb": float(mean_loss[1])} if bounds else {}
                row = {"step": self.step, "loss": float(mean_loss[0]), **vlb, "lr": self.scheduler.get_last_lr()[0],
                       "steps_per_s": len(window) / elapsed, "samples_per_s": len(window) * c.data.batch_size * self.accumulation * self.world / elapsed,
                       "data_wait": waited / elapsed, "epoch": batch["epoch"]}
                log.write(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", sps=f"{row['samples_per_s']:.0f}",
                                wait=f"{row['data_wait']:.0%}")
                started, waited, window, bounds = time.perf_counter(), 0.0, [], []
            bar.update(1)
            if self.step % c.checkpoint.save_every == 0 or self.step == c.optim.steps:
                self.save()
            if main and c.sampling.sample_every and self.step % c.sampling.sample_every == 0:
                bar.write(f"samples: {self.write_grid()}")
        bar.close()
        if records:
            records.close()
        log.close()
        return {"steps": self.step, "checkpoint": ckpt.latest(c.checkpoint.output) if main else None}

    def save(self) -> None:
        path = ckpt.staging_dir(self.config.checkpoint.output, self.step)
        ckpt.write_rng(path, self.rank, self.generator)
        self._barrier()
        if self.rank == 0:
            ckpt.write_main_state(path, self.model, self.ema, self.optimizer, self.scheduler, self.scaler,
                                  self.step, self.full_config())
            ckpt.publish(self.config.checkpoint.output, self.step, self.config.checkpoint.keep)
        self._barrier()

    def write_grid(self) -> str:
        """Rank 0: the held-back grid at this step, drawn by the hook (set up the first time)."""
        if self.grid is None:
            c = self.config
            held = read_held_back(c.data.table, self.columns, self.held_back, self.version, mode=c.mode,
                                  provenance=self.provenance, scaling=self.scaling, device=self.device,
                                  precision=c.model.precision, seed=c.seed, output=c.checkpoint.output)
            self.grid = self.sample_grid_hook(held)
        return self.grid(self.ema, self.step)

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def full_config(self) -> dict:
        return {"train": self.config.sections(), "provenance": self.provenance, "world_size": self.world,
                "columns": asdict(self.columns), "scaling_factor": self.scaling}


def accumulation_steps(c: TrainConfig, world: int) -> int:
    """Forward passes an optimizer step takes on each rank to reach --global-batch (1: none)."""
    if c.data.global_batch is None:
        return 1
    per_pass = c.data.batch_size * world
    if c.data.global_batch % per_pass:
        raise UserError(f"--global-batch {c.data.global_batch}: must be a multiple of --batch-size × ranks "
                        f"({c.data.batch_size} × {world} = {per_pass})")
    return c.data.global_batch // per_pass


def _held_back(train: dict) -> int:
    """How many rows a run held back from training (it changes the data order)."""
    return train.get("sample_rows", 8) if train.get("sample_every", 0) else 0


def columns_and_provenance(c: TrainConfig, meta: dict) -> tuple[FeatureColumns, dict]:
    cond_encoder = c.data.condition if c.mode == "i2i" else c.data.text
    provenance = {}
    for role, encoder in (("latents", c.data.latents), ("condition", cond_encoder)):
        record = features.provenance_of(meta, encoder)
        if record is None:
            present = sorted(k[len(features.META_ENCODER):] for k in meta if k.startswith(features.META_ENCODER))
            raise UserError(f"--data {c.data.table} holds no {encoder} features (it holds: {', '.join(present) or 'none'}); "
                            f"run lumos-encode --encoder {encoder} first")
        provenance[role] = {k: v for k, v in record.items() if k not in PROVENANCE_IGNORED}
    if c.mode == "i2i":
        cond, length = _image_condition(c, provenance["condition"], meta), None
    elif c.data.caption in ("short", "mix"):
        cond, length = features.tokens_column(cond_encoder), features.len_column(cond_encoder)
    else:
        cond, length = features.long_tokens_column(cond_encoder), features.long_len_column(cond_encoder)
    mix = dict(long_cond=features.long_tokens_column(cond_encoder), long_length=features.long_len_column(cond_encoder),
               long_share=c.data.caption_mix) if c.mode == "t2i" and c.data.caption == "mix" else {}
    shapes = provenance["latents"].get("bucket_shapes")
    buckets = dict(bucket=features.bucket_column(c.data.latents), bucket_shapes=tuple(tuple(s) for s in shapes)) \
        if shapes else {}
    return FeatureColumns(features.mean_column(c.data.latents), features.std_column(c.data.latents), cond, length,
                          latents_ok=features.ok_column(c.data.latents),
                          cond_ok=features.ok_column(cond_encoder) if length is None else None, **mix, **buckets), \
        provenance


def base_latent_shape(columns: FeatureColumns, schema) -> tuple[int, ...]:
    """The latents' shape, or for bucketed latents the square bin's: the model's base size (its position
    embedding's scale; other bins are interpolated to, as PixArt's multi-aspect training does)."""
    if columns.bucket_shapes:
        return next(tuple(s) for s in columns.bucket_shapes if s[1] == s[2])
    return features.shape_of(schema.field(columns.mean))


def null_tokens(c: TrainConfig, schema, columns: FeatureColumns) -> int:
    """--arch lumos: the fixed null's tokens, the condition's: I2I one (CLS) or the token set's; T2I 120."""
    if c.mode == "t2i":
        return T2I_NULL_TOKENS
    shape = features.shape_of(schema.field(columns.cond))
    return shape[0] if len(shape) == 2 else 1


def downsample(record: dict, latent_shape) -> int:
    """Pixels per latent cell (8 for the SD VAE, 1 for `pixels`), from the latents' provenance."""
    return max(1, int(record.get("resolution", latent_shape[-1] * 8)) // latent_shape[-1])


def bucket_range(counts: np.ndarray, bucket: int) -> tuple[int, int]:
    """Where bucket `bucket`'s rows lie in a positions file grouped by bucket."""
    start = int(np.sum(counts[:bucket]))
    return start, start + int(counts[bucket])


def _image_condition(c: TrainConfig, record: dict, meta: dict) -> str:
    """The column of the I2I condition: the CLS vector, or the token set lumos-encode --tokens stored."""
    if c.data.condition_tokens == "cls":
        return features.cls_column(c.data.condition)
    stored = record.get("tokens", "cls")
    if stored != c.data.condition_tokens:
        raise UserError(f"--condition-tokens {c.data.condition_tokens}: the {c.data.condition} features of --data {c.data.table} "
                        f"hold the {stored} set; run lumos-encode --encoder {c.data.condition} --tokens "
                        f"{c.data.condition_tokens} into a features table first")
    return features.tokens_column(c.data.condition)


# What a run started with --init may change in its features: the latents' resolution and bucketing (progressive
# stages), the condition's token set (its null and projection are re-initialised where the shapes differ), and
# either's compute dtype (bf16 or fp32 encodes of one model: no other meaning). The encoder, its weights and how it
# saw its input (crop, DINO transform, caption cleaning) must stay: the loaded weights were trained on those.
INIT_MAY_CHANGE = {"latents": ("resolution", "shapes", "crop", "buckets", "bucket_shapes", "compute_dtype"),
                   "condition": ("shapes", "tokens", "compute_dtype")}


def _same_meaning(record: dict, role: str) -> dict:
    """A features record less what an --init run may change (INIT_MAY_CHANGE)."""
    return {k: v for k, v in record.items() if k not in INIT_MAY_CHANGE[role]}


def _same_provenance(saved: dict, now: dict, where: str) -> None:
    for role in ("latents", "condition"):
        if saved[role] != now[role]:
            raise UserError(f"--data holds {role} features made differently from those {where} was trained on "
                            f"({_differs(saved[role], now[role])})")


def _differs(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "differs in: " + "; ".join(f"{k}: {a.get(k)!r} then, {b.get(k)!r} now" for k in keys)


@contextlib.contextmanager
def _one_writer(output: str, rank: int, world: int):
    """Rank 0 holds the run folder's lock for the whole run; every rank learns at once whether it got it, so a
    refused torchrun ends in one line on each rank instead of waiting in a collective."""
    with contextlib.ExitStack() as held:
        refused = None
        if rank == 0:
            try:
                held.enter_context(output_lock(output, "lumos-train"))
            except UserError as err:
                refused = str(err)
        refused = _from_rank0(refused, world)
        if refused:
            raise UserError(refused)
        yield


def run_training(config: TrainConfig, say=print, sample_grid: SampleGrid | None = None) -> dict:
    """Train `config`'s run. `sample_grid` draws the --sample-every pictures (lumos.generation's held-back grid,
    passed in by the lumos-train command: the trainer itself never loads an encoder)."""
    config.validate()  # before the lock: an impossible option writes nothing, not even the folder
    if config.sampling.sample_every and sample_grid is None:
        raise UserError(f"--sample-every {config.sampling.sample_every}: no sample-grid hook was given (the lumos-train "
                        "command passes lumos.generation's; from Python, pass sample_grid=)")
    world, rank, _ = _process()
    try:
        with _one_writer(config.checkpoint.output, rank, world):
            return Run(config, say, sample_grid).train()
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
