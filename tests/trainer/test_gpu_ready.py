"""What makes the step fast on GPUs (issue 15, item 6), checked where a CPU can: the EMA update in one
foreach call equals the per-parameter update, and --compile compiles the DiT in place (the checkpoint's names
unchanged). The speed itself is bench/train_gpu.py's, on a GPU."""

import copy

import torch

from lumos.trainer.train import Run, TrainConfig

TINY = dict(model="DiT-T/2", latents="tiny-vae", condition="tiny-dino", precision="fp32", batch_size=4, workers=0)


def _run(feature_table, tmp_path, **kw):
    return Run(TrainConfig.of("i2i", data=feature_table, output=str(tmp_path / "run"), **TINY, **kw),
               say=lambda *_: None)


def test_the_foreach_ema_equals_the_per_parameter_update(feature_table, tmp_path):
    run = _run(feature_table, tmp_path)
    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(torch.randn_like(p))
    expected = copy.deepcopy(run.ema)
    with torch.no_grad():
        for e, p in zip(expected.parameters(), run.model.parameters()):
            e.lerp_(p, 1 - 0.9)
    run.update_ema(0.9)
    pairs = list(zip(run.ema.parameters(), expected.parameters()))
    assert len(pairs) > 10 and all(torch.equal(a, b) for a, b in pairs)
    assert not all(torch.equal(a, p) for a, p in zip(run.ema.parameters(), run.model.parameters()))


def test_compile_compiles_the_dit_in_place(feature_table, tmp_path):
    plain = _run(feature_table, tmp_path / "plain")
    compiled = _run(feature_table, tmp_path / "compiled", compile=True)
    assert getattr(compiled.model.transformer, "_compiled_call_impl", None) is not None
    assert getattr(plain.model.transformer, "_compiled_call_impl", None) is None
    assert compiled.model.state_dict().keys() == plain.model.state_dict().keys()  # checkpoints read the same
    assert compiled.config.model.compile and not plain.config.model.compile
