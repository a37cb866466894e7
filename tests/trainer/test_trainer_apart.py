"""The trainer reads features only (issue 15, item 5): a T2I run with --sample-every, in a fresh process, draws
its grids through the hook it is given and never imports the encoders' package, curation/ or generation/, nor the
encoder libraries. tests/test_layering.py checks the same rule on the source; this runs it."""

import json
import subprocess
import sys

import pytest

from lumos.floor.errors import UserError
from lumos.trainer.train import TrainConfig, run_training

TINY = dict(mode="t2i", text="tiny-t5", model="DiT-T/2", latents="tiny-vae", precision="fp32",
            batch_size=4, workers=0, steps=4, sample_every=2, sample_rows=2, log_every=2)

SCRIPT = """
import json, sys
from lumos.trainer.train import TrainConfig, run_training

calls = []

def hook(held):
    calls.append({"ids": held.ids, "mean": list(held.mean.shape), "cond": list(held.cond.shape),
                  "mask": len(held.mask)})
    def draw(ema, step):
        calls.append({"step": step, "model": type(ema).__name__})
        return f"step-{step}"
    return draw

run_training(TrainConfig.of(**json.loads(sys.argv[1])), say=lambda *_: None, sample_grid=hook)
banned = ("lumos.pipeline", "lumos.curation", "lumos.generation", "timm", "open_clip", "transformers")
print(json.dumps({"calls": calls, "loaded": sorted(m for m in sys.modules if m.startswith(banned)
                                                   or "autoencoder" in m)}))
"""


def test_a_run_with_sample_grids_never_imports_the_encoders(feature_table, tmp_path):
    config = {**TINY, "data": feature_table, "output": str(tmp_path / "run")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(config)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    first, *draws = out["calls"]
    assert len(first["ids"]) == 2 and first["mean"][0] == 2 and first["cond"][0] == 2 and first["mask"] == 2
    assert draws == [{"step": 2, "model": "LumosDiT"}, {"step": 4, "model": "LumosDiT"}]
    assert out["loaded"] == []
    held = json.loads((tmp_path / "run" / "samples" / "held-back.json").read_text())
    assert held == {"mode": "t2i", "ids": first["ids"]}


def test_sample_grids_without_a_hook_are_refused_in_one_line(feature_table, tmp_path):
    with pytest.raises(UserError, match=r"^--sample-every 2: no sample-grid hook was given") as err:
        run_training(TrainConfig.of(**TINY, data=feature_table, output=str(tmp_path / "run")), say=lambda *_: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()
