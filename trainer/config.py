"""lumos-train's settings, in small typed sections (torchtitan's component configs): the mode, the seed, and
[data], [model], [optim], [checkpoint], [sampling]. Each field is one command-line option, whose name and help
are the field's (trainer/cli.py builds the command from them); a recipe (configs/*.toml, `--config NAME|PATH`)
sets any field by section and the command line overrides it. RUN/config.toml is the resolved configuration,
itself a recipe.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources

from lumos.floor.errors import UserError
from lumos.schemas import features
from lumos.trainer.models import DIT_MODELS

BOTH, I2I, T2I = ("i2i", "t2i"), ("i2i",), ("t2i",)
PRECISIONS = ("fp16", "bf16", "fp32")
CAPTIONS = ("short", "long", "mix")


def option(default, help: str, *, flag: str | None = None, modes=BOTH, cli: bool = True):
    """A field that is also the option --FLAG (default: the field's name) of the modes that have it."""
    return field(default=default, metadata={"help": help, "flag": flag, "modes": modes, "cli": cli})


@dataclass
class DataConfig:
    table: str = option("", "The features table (features.lance from lumos-encode).", flag="data")
    latents: str = option("sd-vae", "The VAE whose mean/std columns are the latents.")
    condition: str = option("dino-b", "The image encoder whose features condition.", modes=I2I)
    condition_tokens: str = option("cls", "cls, patch, all or top119 (lumos-encode --tokens).", modes=I2I)
    # official Lumos' T2I loads T5 v1.1 XXL (the paper names Flan-T5-XXL: `t5-xxl`, a named option)
    text: str = option("t5-v1_1-xxl", "The text encoder whose tokens are the condition (t5-xxl: the paper's "
                       "Flan-T5-XXL).", modes=T2I)
    caption: str = option("short", "short, long or mix (a row lacking one: skipped, or the other under mix).",
                          modes=T2I)
    caption_mix: float = option(0.5, "Under --caption mix: the chance of the long caption.", modes=T2I)
    batch_size: int = option(256, "Samples per forward pass per process.")
    global_batch: int | None = option(None, "Samples per optimizer step, by accumulation.")
    workers: int | None = option(None, "DataLoader processes per rank; auto: 4 with a GPU or over 4 cores, else 0.")
    cond_dropout: float = option(0.1, "Chance of the null condition (for guidance).")
    record_samples: bool = option(False, "Log each step's sample ids.")


@dataclass
class ModelConfig:
    size: str = option("DiT-XL/2", f"DiT size: {', '.join(DIT_MODELS)}.", flag="model")
    arch: str = option("pixart", "pixart (adaLN-single, ε-MSE, a learned null: exports to PixArtAlphaPipeline) or "
                       "lumos (official Lumos' DiT: per-block adaLN, learned variance with the hybrid loss, a fixed "
                       "null; the released weights' layout).")
    precision: str = option("auto", "auto (fp16 on a GPU, fp32 on a CPU), fp16, bf16, fp32.")
    grad_checkpointing: bool = option(False, "Recompute activations: less memory, ~30% slower.")
    compile: bool = option(False, "torch.compile the DiT (GPUs: faster after a warm-up).")
    # PixArt-α's multi-scale 1024 px stage: size and aspect-ratio embeddings added to the timestep's
    micro_conditions: bool = option(False, "Condition on each step's image size and aspect ratio (PixArt's "
                                    "micro-conditions, for multi-aspect buckets).")


@dataclass
class OptimConfig:
    # Sources: the Lumos paper (DESIGN.md §2) where it gives a number, PixArt-α's configs where it is silent.
    steps: int = option(65000, "Total optimizer steps (a resumed run goes on to it).")  # paper: T2I 256 px
    lr: float = option(1.6e-4, "AdamW learning rate after the warm-up.")  # paper: constant 1.6e-4
    warmup: int = option(1000, "Linear warm-up steps.")  # paper: 1000
    weight_decay: float = option(0.03, "AdamW weight decay.")  # paper: 0.03
    eps: float = option(1e-10, "AdamW epsilon.")  # PixArt-α's optimizer config (torch's default is 1e-8)
    grad_clip: float = option(0.01, "Gradient-norm clipping (0: none).")  # PixArt-α's gradient_clip
    ema: float = option(0.9999, "EMA decay of the sampling weights, in [0, 1).")  # PixArt-α's, DiT's ema rate


@dataclass
class CheckpointConfig:
    output: str = option("", "The run folder: checkpoints/, metrics.jsonl, loss.png.")
    init: str | None = option(None, "A run or checkpoint to start from: T2I from an I2I run, a stage from the one "
                              "before, a converted official model (lumos-convert).")
    save_every: int = option(1000, "Checkpoint every N steps (and at the end).")
    keep: int = option(3, "Newest checkpoints kept.")
    log_every: int = option(10, "Write metrics.jsonl every N steps.")
    tensorboard: bool = option(False, "Also log to RUN/tensorboard.")


@dataclass
class SamplingConfig:
    sample_every: int = option(0, "Every N steps, a grid of held-back rows (0: none).")
    sample_rows: int = option(8, "Rows held back for those grids.")


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "checkpoint": CheckpointConfig,
            "sampling": SamplingConfig}
TOP = ("mode", "seed")  # the recipe keys outside any section


@dataclass
class TrainConfig:
    mode: str  # i2i | t2i
    seed: int = option(0, "Seeds the weights, the data order and the noise.")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    resume: bool = option(False, "Continue the run in --output from its last intact checkpoint.")
    recipe: str | None = field(default=None)  # the --config it was resolved from (a record, not a setting)

    @classmethod
    def of(cls, mode: str, **options) -> TrainConfig:
        """A configuration from option names (`data=`, `model=`, `lr=`, ...: the flags' names), each placed
        in its section; an unknown name fails in one line."""
        config = cls(mode=mode)
        for name, value in options.items():
            config.set(name, value)
        return config

    def set(self, name: str, value) -> None:
        where = OPTION_FIELDS.get(name)
        if where is None:
            raise UserError(f"{name}: not a lumos-train setting")
        section, attribute = where
        setattr(getattr(self, section) if section else self, attribute, value)

    def flat(self) -> dict:
        """{option name: value} of every setting (the run record's plain view; resume compares it)."""
        return {"mode": self.mode,
                **{name: getattr(getattr(self, s) if s else self, a) for name, (s, a) in OPTION_FIELDS.items()}}

    def sections(self) -> dict:
        """The nested record (config.json's `train`, config.toml)."""
        return {"mode": self.mode, "seed": self.seed, **{s: asdict(getattr(self, s)) for s in SECTIONS},
                "recipe": self.recipe}

    def validate(self) -> None:
        """Impossible values end in one line before anything is written, from the CLI and the Python API alike."""
        d, m, o, k, s = self.data, self.model, self.optim, self.checkpoint, self.sampling
        checks = [
            (self.mode in ("i2i", "t2i"), f"mode {self.mode!r}: expected i2i or t2i"),
            (bool(d.table), "--data: missing (the features table, from the command line or --config)"),
            (bool(k.output), "--output: missing (the run folder, from the command line or --config)"),
            (m.size in DIT_MODELS, f"--model {m.size}: choose from {', '.join(DIT_MODELS)}"),
            (m.precision in (*PRECISIONS, "auto"), f"--precision {m.precision}: expected fp16, bf16, fp32 or auto"),
            (m.arch in ("pixart", "lumos"), f"--arch {m.arch}: expected pixart or lumos"),
            (d.caption in CAPTIONS, f"--caption {d.caption}: expected short, long or mix"),
            (_finite(d.caption_mix) and 0 <= d.caption_mix <= 1, f"--caption-mix {d.caption_mix}: must be in [0, 1]"),
            (d.condition_tokens in features.TOKEN_SETS,
             f"--condition-tokens {d.condition_tokens}: expected one of {', '.join(features.TOKEN_SETS)}"),
            (self.mode == "i2i" or d.condition_tokens == "cls", "--condition-tokens is for i2i"),
            (o.steps >= 1, f"--steps {o.steps}: must be >= 1"),
            (d.batch_size >= 1, f"--batch-size {d.batch_size}: must be >= 1"),
            (d.global_batch is None or d.global_batch >= d.batch_size,
             f"--global-batch {d.global_batch}: must be >= --batch-size ({d.batch_size})"),
            (_finite(o.lr) and o.lr > 0, f"--lr {o.lr}: must be > 0"),
            (o.warmup >= 0, f"--warmup {o.warmup}: must be >= 0"),
            (_finite(o.weight_decay) and o.weight_decay >= 0, f"--weight-decay {o.weight_decay}: must be >= 0"),
            (_finite(o.eps) and o.eps > 0, f"--eps {o.eps}: must be > 0"),
            (_finite(o.grad_clip) and o.grad_clip >= 0, f"--grad-clip {o.grad_clip}: must be >= 0 (0: no clipping)"),
            (_finite(o.ema) and 0 <= o.ema < 1, f"--ema {o.ema}: must be in [0, 1)"),
            (_finite(d.cond_dropout) and 0 <= d.cond_dropout < 1,
             f"--cond-dropout {d.cond_dropout}: must be in [0, 1)"),
            (k.save_every >= 1, f"--save-every {k.save_every}: must be >= 1"),
            (k.keep >= 1, f"--keep {k.keep}: must be >= 1"),
            (k.log_every >= 1, f"--log-every {k.log_every}: must be >= 1"),
            (self.seed >= 0, f"--seed {self.seed}: must be >= 0"),
            (d.workers is None or d.workers >= 0, f"--workers {d.workers}: must be >= 0 (0: load in the main process)"),
            (s.sample_every >= 0, f"--sample-every {s.sample_every}: must be >= 0 (0: no sample grids)"),
            (s.sample_every == 0 or s.sample_rows >= 1, f"--sample-rows {s.sample_rows}: must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def fit_machine(self, cuda: bool) -> None:
        """The `auto` settings made concrete for this machine (the run record says what was used), and what
        the machine cannot do refused in one line."""
        m, d = self.model, self.data
        if m.precision == "auto":
            m.precision = "fp16" if cuda else "fp32"
        if m.precision == "fp16" and not cuda:
            raise UserError("--precision fp16 needs a GPU; on a CPU pass --precision fp32 (or bf16, or auto)")
        if d.workers is None:  # on 2 cores, 4 loader processes made training 2.6x slower than 0
            d.workers = 4 if cuda or (os.cpu_count() or 1) > 4 else 0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _option_fields() -> dict[str, tuple[str | None, str]]:
    """option name -> (section or None, attribute), in the order the command lists them."""
    out = {}
    for f in fields(TrainConfig):
        if f.name in SECTIONS:
            for g in fields(SECTIONS[f.name]):
                out[g.metadata.get("flag") or g.name] = (f.name, g.name)
        elif f.metadata.get("cli"):
            out[f.name] = (None, f.name)
    first = ("data", "output")  # the two every run names, listed first
    return {k: out[k] for k in sorted(out, key=lambda k: k not in first)}


OPTION_FIELDS = _option_fields()


def option_specs(mode: str):
    """(option name, the dataclass field) of every option `mode` has, for the command line."""
    for name, (section, attribute) in OPTION_FIELDS.items():
        owner = SECTIONS[section] if section else TrainConfig
        f = next(g for g in fields(owner) if g.name == attribute)
        if mode in f.metadata["modes"]:
            yield name, f


def default_of(f):
    return f.default if f.default is not MISSING else None


def flat_record(train: dict) -> dict:
    """A run record's `train` settings by option name: nested (this version) or flat (runs made before the
    sections existed)."""
    if "optim" not in train:
        return dict(train)
    out = {name: (train[s] if s else train).get(a) for name, (s, a) in OPTION_FIELDS.items()
           if a in (train[s] if s else train)}
    out["mode"] = train["mode"]
    return out


# --- recipes ---

def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("lumos.configs").iterdir() if p.name.endswith(".toml"))


def recipe_path(name_or_path: str) -> str:
    """--config NAME (configs/NAME.toml, shipped) or a path to a .toml file."""
    if os.path.isfile(name_or_path):
        return name_or_path
    shipped = resources.files("lumos.configs") / f"{name_or_path}.toml"
    if "/" not in name_or_path and shipped.is_file():
        return str(shipped)
    raise UserError(f"--config {name_or_path}: no such file, nor a recipe of ours ({', '.join(recipe_names())})")


def read_recipe(name_or_path: str) -> dict:
    """{option name: value} of a recipe, every key checked against its section and type."""
    import tomllib

    path = recipe_path(name_or_path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"--config {path}: not TOML ({err})") from None
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                raise UserError(f"--config {path}: unknown section [{key}] (sections: {', '.join(SECTIONS)})")
            for attribute, v in value.items():
                out[_recipe_key(path, key, attribute, v)] = v
        elif key in TOP:
            out[_recipe_key(path, None, key, value)] = value
        else:
            raise UserError(f"--config {path}: unknown key {key} (at the top: {', '.join(TOP)}; the rest in sections)")
    return out


def _recipe_key(path: str, section: str | None, attribute: str, value) -> str:
    """The option name of recipe key [section] attribute, its value's type checked."""
    if section is None and attribute == "mode":
        if value not in ("i2i", "t2i"):
            raise UserError(f"--config {path}: mode = {value!r}: expected i2i or t2i")
        return "mode"
    owner = SECTIONS[section] if section else TrainConfig
    f = next((g for g in fields(owner) if g.name == attribute and g.metadata.get("cli")), None)
    where = f"[{section}] {attribute}" if section else attribute
    if f is None:
        names = ", ".join(g.name for g in fields(owner) if g.metadata.get("cli"))
        raise UserError(f"--config {path}: unknown key {where} (its keys: {names})")
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    ok = {"str": isinstance(value, str), "str | None": isinstance(value, str),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "int | None": (isinstance(value, int) and not isinstance(value, bool))
          or (attribute == "workers" and value == "auto"),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool)}[kind]
    if not ok:
        raise UserError(f"--config {path}: {where} = {value!r}: expected {kind.replace(' | None', '')}")
    return f.metadata.get("flag") or attribute


def to_toml(config: TrainConfig) -> str:
    """The resolved configuration as a recipe (unset values, i.e. None, left out: they are the defaults)."""
    lines = [f"# the resolved configuration of this run: lumos-train {config.mode} --config THIS_FILE",
             f"mode = {_toml(config.mode)}", f"seed = {_toml(config.seed)}"]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {_toml(v)}" for k, v in asdict(getattr(config, section)).items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    return json.dumps(value) if isinstance(value, str) else str(value)
