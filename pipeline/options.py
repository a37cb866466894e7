"""`lumos-encode`'s option values that cannot work end the command in one line, before it writes anything."""

from __future__ import annotations

from lumos.floor.errors import UserError
from lumos.floor.options import between, positive


def encode_options(resolution: int, batch_size: int, gpus_per_actor: float, commit_every: float = 300.0) -> None:
    """`lumos-encode`."""
    positive("--resolution", resolution)
    if resolution % 8:
        raise UserError(f"--resolution {resolution}: must be a multiple of 8 (the VAE downsamples by 8)")
    positive("--batch-size", batch_size)
    between("--gpus-per-actor", gpus_per_actor, 0, 8, low_open=True)
    between("--commit-every", commit_every, 0, 1e9, low_open=True)
