"""`lumos-train`: the trainer's command (lumos.trainer.cli) with generation's held-back sample grids plugged in
for --sample-every. The trainer reads features only; this is where the encoders (the VAE's decoder, for the
grids) come in, and only when a grid is drawn.

    torchrun --nproc_per_node 8 -m lumos.generation.train_cli i2i --data features.lance --output runs/i2i
"""

from __future__ import annotations

from lumos.trainer.cli import make_app


def held_back_grid(held):
    from lumos.generation.held_back_grid import HeldBackGrid

    return HeldBackGrid(held)


app = make_app(sample_grid=held_back_grid)

if __name__ == "__main__":
    app()
