"""`lumos-sample i2i | interpolate | t2i`: images from a lumos-train run.

The condition is computed the way the run's features were made (the encoders, weights and preprocessing
named in the checkpoint's provenance, `tiny-*` test encoders included), the EMA DiT samples with DPM-Solver++
(or DDIM) and classifier-free guidance, the run's VAE decodes, and one PNG grid is written. The same
--seed gives the same bytes.
"""

from __future__ import annotations

import os
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

os.environ.setdefault("LANCE_LOG", "error")

from lumos.floor.cli_app import new_app  # noqa: E402
from lumos.floor.errors import UserError  # noqa: E402

err_console = Console(stderr=True)
app = new_app(__doc__, group=True, no_args_is_help=True)

CHECKPOINT = typer.Option(..., help="A lumos-train run folder (its newest checkpoint) or a checkpoints/step-N folder.")
NUM = typer.Option(4, help="Samples per input.")
STEPS = typer.Option(20, help="Sampling steps.")
CFG = typer.Option(4.5, help="Classifier-free guidance scale (1: none).")
SCHEDULER = typer.Option("dpm", help="dpm (DPM-Solver++ 2M, PixArt's) or ddim.")
SEED = typer.Option(0, help="Seeds the noise (drawn on the CPU: the same seed gives the same samples).")
OUTPUT = typer.Option(..., help="The PNG to write.")
DEVICE = typer.Option("auto", help="cuda, cpu or auto (cuda when there is one).")
PRECISION = typer.Option("auto", help="DiT compute: fp16, bf16, fp32, or auto (fp16 on a GPU, fp32 on a CPU).")


def check_options(num: int, steps: int, cfg: float, scheduler: str, device: str, precision: str,
                  least: int = 1) -> None:
    """Impossible values end in one line before any model loads or anything is written."""
    import math
    import re

    from lumos.generation.sampler import SCHEDULERS

    if num < least:
        raise UserError(f"--num {num}: must be >= {least}" + (" (A and B)" if least == 2 else ""))
    if steps < 1:
        raise UserError(f"--steps {steps}: must be >= 1")
    if not (math.isfinite(cfg) and cfg >= 0):
        raise UserError(f"--cfg {cfg}: must be >= 0 (1: no guidance)")
    if scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler {scheduler}: expected one of {', '.join(SCHEDULERS)}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UserError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if precision not in ("auto", "fp16", "bf16", "fp32"):
        raise UserError(f"--precision {precision}: expected fp16, bf16, fp32 or auto")


def pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no GPU here")
    return torch.device(device)


def pick_precision(precision: str, device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp16", "bf16", "fp32"):
        raise UserError(f"--precision {precision}: expected fp16, bf16, fp32 or auto")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a GPU; on a CPU use fp32 or bf16")
    return precision


class Session:
    """A run loaded for sampling: the EMA DiT, the VAE, the condition encoder."""

    def __init__(self, checkpoint: str, mode: str, device: str, precision: str):
        from lumos.generation.run_encoders import ImageCondition, Latents, TextCondition
        from lumos.generation.sampler import find_checkpoint, load_trained

        self.device = pick_device(device)
        self.precision = pick_precision(precision, self.device)
        path, config = find_checkpoint(checkpoint)
        if config["train"]["mode"] != mode:
            raise UserError(f"--checkpoint {checkpoint} is a {config['train']['mode']} run; use lumos-sample "
                            f"{config['train']['mode']}")
        provenance = config["provenance"]  # the encoders first: a missing one fails before the DiT loads
        self.latents = Latents(provenance["latents"], float(config["scaling_factor"]), self.device)
        if mode == "t2i":
            self.condition = TextCondition(provenance["condition"], self.device)
        else:
            self.condition = ImageCondition(provenance["condition"], self.device, config["columns"]["cond"])
        self.trained = load_trained(path, self.device)
        err_console.print(f"{path}: {self.trained.settings['model']} ({mode}), {self.latents.resolution}px, on "
                          f"{self.device}", highlight=False)

    def images(self, cond, mask, latent_shape=None, **kw):
        """Conditions → decoded samples (P·num, H, W, 3) uint8 (default: the run's own size)."""
        from lumos.generation.sampler import generate

        if kw["num"] < 1:
            raise UserError("--num must be >= 1")
        latents = generate(self.trained.model, cond, mask, latent_shape=latent_shape or self.trained.latent_shape,
                           precision=self.precision, **kw)
        return self.latents.decode(latents)


def open_images(paths: list[str]):
    from PIL import Image, UnidentifiedImageError

    out = []
    for path in paths:
        try:
            with Image.open(path) as im:
                out.append(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(f"--image {path}: cannot read it as an image ({str(err).splitlines()[0]})") from None
    return out


def run(body) -> None:
    """Run a command body; a user's mistake ends in one line and exit 2."""
    try:
        path = body()
    except UserError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    print(f"wrote {path}")


@app.command()
def i2i(checkpoint: str = CHECKPOINT,
        image: List[str] = typer.Option(..., help="An input image; repeat for more (one grid row each)."),
        num: int = NUM, steps: int = STEPS, cfg: float = CFG, scheduler: str = SCHEDULER, seed: int = SEED,
        output: str = OUTPUT, device: str = DEVICE, precision: str = PRECISION):
    """Variations of input images.

    Each row is an input (as the VAE sees it) then --num samples conditioned on its DINO features."""
    from lumos.generation.grid import sample_labels, save_grid

    def body():
        check_options(num, steps, cfg, scheduler, device, precision)
        s = Session(checkpoint, "i2i", device, precision)
        inputs = open_images(image)
        samples = s.images(s.condition(inputs), None, num=num, steps=steps, cfg=cfg, scheduler=scheduler, seed=seed)
        rows = [[s.latents.show(im), *samples[i * num:(i + 1) * num]] for i, im in enumerate(inputs)]
        return save_grid(rows, output, header=["input", *sample_labels(num, seed)])

    run(body)


@app.command()
def interpolate(checkpoint: str = CHECKPOINT,
                image: List[str] = typer.Option(..., help="Exactly two images, A then B."),
                num: int = typer.Option(8, help="Points from A to B, both ends included."),
                mode: str = typer.Option("lerp", help="How the condition goes from A to B: lerp (a linear blend, as "
                                         "official Lumos) or slerp (along the sphere the L2-normalised features "
                                         "lie on, per token)."),
                steps: int = STEPS, cfg: float = CFG, scheduler: str = SCHEDULER, seed: int = SEED,
                output: str = OUTPUT, device: str = DEVICE, precision: str = PRECISION):
    """A strip from image A to image B.

    A blend of their DINO features (lerp as official Lumos, or slerp), one shared noise (Figure S7)."""
    import torch

    from lumos.generation.grid import save_grid
    from lumos.generation.sampler import slerp

    def blend(a, b, t):
        return (1 - t) * a + t * b if mode == "lerp" else slerp(a, b, t)

    def body():
        if len(image) != 2:
            raise UserError(f"--image: interpolate takes exactly two (A and B), got {len(image)}")
        if mode not in ("lerp", "slerp"):
            raise UserError(f"--mode {mode}: expected lerp or slerp")
        check_options(num, steps, cfg, scheduler, device, precision, least=2)
        s = Session(checkpoint, "i2i", device, precision)
        inputs = open_images(image)
        a, b = s.condition(inputs)
        cond = torch.stack([blend(a, b, i / (num - 1)) for i in range(num)])  # (num, T, D)
        noise = torch.randn((1, *s.trained.latent_shape), generator=torch.Generator("cpu").manual_seed(seed))
        samples = s.images(cond, None, num=1, steps=steps, cfg=cfg, scheduler=scheduler,
                           noise=noise.expand(num, *noise.shape[1:]))
        header = ["A", *(f"t={i / (num - 1):.2f}" for i in range(num)), "B"]
        return save_grid([[s.latents.show(inputs[0]), *samples, s.latents.show(inputs[1])]], output, header=header)

    run(body)


@app.command()
def t2i(checkpoint: str = CHECKPOINT,
        prompt: List[str] = typer.Option(..., help="A prompt; repeat for more (one grid row each)."),
        num: int = NUM, steps: int = STEPS, cfg: float = CFG, scheduler: str = SCHEDULER, seed: int = SEED,
        height: Optional[int] = typer.Option(None, help="Image height in pixels (default: the run's). A run on "
                                             "bucketed latents samples at the aspect-ratio bin nearest "
                                             "--height × --width, as PixArtAlphaPipeline's resolution binning."),
        width: Optional[int] = typer.Option(None, help="Image width in pixels (default: the run's)."),
        output: str = OUTPUT, device: str = DEVICE, precision: str = PRECISION):
    """Images from text prompts.

    Each row: --num samples for one prompt, encoded by the run's T5; any --height × --width the VAE and patch
    divide (the position embedding is a sin-cos table computed for the size), or for a run on bucketed
    latents the nearest bin."""
    from lumos.generation.grid import sample_labels, save_grid

    def body():
        check_options(num, steps, cfg, scheduler, device, precision)
        s = Session(checkpoint, "t2i", device, precision)
        shape = s.trained.latent_shape_at(height, width)
        if s.trained.bucket_shapes and (height or width):
            factor = s.trained.downsample
            err_console.print(f"bucketed run: sampling at the nearest bin, {shape[1] * factor} × {shape[2] * factor} px",
                              highlight=False)
        cond, mask = s.condition(list(prompt))
        samples = s.images(cond, mask, latent_shape=shape, num=num, steps=steps, cfg=cfg, scheduler=scheduler,
                           seed=seed)
        return save_grid([list(samples[i * num:(i + 1) * num]) for i in range(len(prompt))], output,
                         header=sample_labels(num, seed), titles=list(prompt))

    run(body)


if __name__ == "__main__":
    app()

