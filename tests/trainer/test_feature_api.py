"""The Python API for one's own loop gives the trainer's batches: the same rows in the same order for a seed
and step, through the same `prepare` (latents drawn and scaled, condition normalised, text masks)."""

import torch

from lumos.trainer.feature_api import feature_loader, prepare, step_seed
from lumos.trainer.train import Run, TrainConfig

TINY = dict(model="DiT-T/2", latents="tiny-vae", condition="tiny-dino", text="tiny-t5", precision="fp32",
            batch_size=5, workers=0)


def _trainer_batch(data, tmp_path, mode, step):
    run = Run(TrainConfig.of(mode=mode, data=data, output=str(tmp_path / f"run-{mode}-{step}"), seed=3, **TINY))
    run.step = step
    return run, next(run.loader())


def test_api_batches_equal_the_trainers_for_the_same_seed_and_step(feature_table, tmp_path):
    for mode, step in (("i2i", 0), ("i2i", 7), ("t2i", 2)):
        run, raw = _trainer_batch(feature_table, tmp_path, mode, step)
        mine = prepare(raw, run.scaling, mode, torch.Generator().manual_seed(step_seed(3, 0, step)))
        api = next(iter(feature_loader(feature_table, mode=mode, latents="tiny-vae", condition="tiny-dino",
                                       text="tiny-t5", batch_size=5, seed=3, step=step, cache=str(tmp_path))))
        assert api["step"] == step and api["epoch"] == raw["epoch"]
        assert set(api) - {"step", "epoch"} == set(mine)
        for key, value in mine.items():
            assert torch.equal(api[key], value), (mode, step, key)
        assert api["x0"].shape == raw["mean"].shape and api["x0"].dtype == torch.float32
        if mode == "i2i":  # one L2-normalised condition token a row
            assert api["cond"].shape[1] == 1 and torch.allclose(api["cond"].norm(dim=-1), torch.ones(5, 1))
        else:  # padded T5 tokens with their mask
            assert api["mask"].shape == api["cond"].shape[:2] and api["mask"].sum() > 0


def test_api_ranks_split_an_epoch_and_epochs_start_where_said(feature_table, tmp_path):
    common = dict(latents="tiny-vae", condition="tiny-dino", batch_size=4, seed=1, cache=str(tmp_path))
    first = feature_loader(feature_table, world=2, rank=0, **common)
    steps = first.dataset.steps_per_epoch
    seen = []
    for rank in (0, 1):
        for _, batch in zip(range(steps), feature_loader(feature_table, world=2, rank=rank, **common)):
            seen += [tuple(row.flatten()[:4].tolist()) for row, w in zip(batch["cond"], batch["weight"]) if w > 0]
    assert len(seen) == len(set(seen)) == 24  # every usable row once an epoch across the two ranks
    second = next(iter(feature_loader(feature_table, world=2, rank=0, epoch=1, **common)))
    assert second["step"] == steps and second["epoch"] == 1
