"""Recipes (issue 15, item 1): the paper's stages in configs/*.toml, `lumos-train --config NAME|PATH` with any
flag as an override, the resolved configuration recorded in the run folder (config.toml, itself a recipe),
and a resumed run keeping its own settings unless told otherwise."""

import json
import re
from importlib import resources

import pytest
from typer.testing import CliRunner

from lumos.generation.train_cli import app
from lumos.trainer.config import OPTION_FIELDS, flat_record, read_recipe, recipe_names

# The numbers of DESIGN.md §2 that the recipes must carry: (steps, lr, per-GPU batch × 64 GPUs = global batch).
PAPER = {"i2i-256": (65000, 1.6e-4, 256, 16384), "t2i-256": (65000, 1.6e-4, 256, 16384),
         "t2i-512": (60000, 8e-5, 64, 4096), "t2i-1024": (20000, 4e-5, 16, 1024),
         "t2i-1024-ms": (20000, 4e-5, 16, 1024)}
# each stage's latents: one features table holds them all (lumos-encode names them by resolution and bucketing)
LATENTS = {"i2i-256": "sd-vae", "t2i-256": "sd-vae", "t2i-512": "sd-vae-512", "t2i-1024": "sd-vae-1024",
           "t2i-1024-ms": "sd-vae-1024-pixart"}
SHRINK = ["--model", "DiT-T/2", "--latents", "tiny-vae", "--precision", "fp32", "--batch-size", "4",
          "--global-batch", "8", "--steps", "2", "--workers", "0", "--warmup", "1", "--save-every", "2"]


def _invoke(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code in (0, 2), (result.exception, result.output)  # not a traceback
    return result.exit_code, [line for line in result.stderr.splitlines() if line.strip()]


def test_the_shipped_recipes_hold_the_papers_numbers_each_commented():
    assert recipe_names() == sorted(PAPER)
    for name, (steps, lr, batch, global_batch) in PAPER.items():
        settings = read_recipe(name)
        assert (settings["steps"], settings["lr"], settings["batch_size"], settings["global_batch"]) == \
            (steps, lr, batch, global_batch), name
        assert settings["model"] == "DiT-XL/2" and settings["grad_checkpointing"] is True
        assert settings["arch"] == "lumos"  # official Lumos' DiT (issue 16)
        assert (settings["weight_decay"], settings["warmup"], settings["cond_dropout"]) == (0.03, 1000, 0.1)
        assert (settings["eps"], settings["grad_clip"], settings["ema"]) == (1e-10, 0.01, 0.9999)  # PixArt-α's
        assert settings["mode"] == name.split("-")[0]
        text = (resources.files("lumos.configs") / f"{name}.toml").read_text()
        bare = [line for line in text.splitlines() if re.match(r"^\w+ = ", line) and "#" not in line
                and not line.startswith("mode =")]
        assert not bare, f"{name}: values without a comment saying where they come from: {bare}"
    assert read_recipe("t2i-256")["caption"] == "mix"
    assert {name: read_recipe(name)["latents"] for name in PAPER} == LATENTS
    assert [name for name in PAPER if read_recipe(name).get("micro_conditions")] == ["t2i-1024-ms"]


def test_a_recipe_with_overrides_trains_and_the_run_records_the_resolved_config(feature_table, tmp_path):
    run = tmp_path / "run"
    code, lines = _invoke("t2i", "--config", "t2i-256", "--data", feature_table, "--output", str(run),
                          "--text", "tiny-t5", *SHRINK)
    assert code == 0, lines
    train = json.loads((run / "config.json").read_text())["train"]
    assert train["recipe"] == "t2i-256"
    assert train["model"] == {"size": "DiT-T/2", "arch": "lumos", "precision": "fp32", "grad_checkpointing": True,  # recipe + flags
                              "compile": False, "micro_conditions": False}
    assert (train["optim"]["lr"], train["optim"]["steps"], train["optim"]["warmup"]) == (1.6e-4, 2, 1)
    assert (train["data"]["caption"], train["data"]["caption_mix"], train["data"]["global_batch"]) == ("mix", 0.5, 8)
    resolved = read_recipe(str(run / "config.toml"))  # the resolved configuration is itself a recipe
    recorded = flat_record(train)  # and says what config.json says
    assert {k: recorded[k] for k in resolved} == resolved and set(recorded) - set(resolved) == {"init"}
    assert resolved["data"] == feature_table and resolved["output"] == str(run) and resolved["lr"] == 1.6e-4
    # it reproduces the run: --config RUN/config.toml --resume goes on without restating a flag
    code, lines = _invoke("t2i", "--config", str(run / "config.toml"), "--resume", "--steps", "4")
    assert code == 0, lines
    assert json.loads((run / "config.json").read_text())["train"]["optim"]["steps"] == 4


def test_resume_keeps_the_runs_own_settings(feature_table, tmp_path):
    run = tmp_path / "run"
    code, lines = _invoke("i2i", "--data", feature_table, "--output", str(run), "--condition", "tiny-dino",
                          "--lr", "3e-4", "--ema", "0.5", *SHRINK)
    assert code == 0, lines
    # without restating: the DiT size, the latents, lr and EMA are the run's, not the defaults (DiT-XL/2 would be
    # refused as "other model"); a flag given is in force and said
    code, lines = _invoke("i2i", "--data", feature_table, "--output", str(run), "--resume", "--steps", "3",
                          "--ema", "0.25")
    assert code == 0, lines
    assert [x for x in lines if x.startswith("--resume")] == ["--resume: in force from here: ema 0.25 (was 0.5), "
                                                              "steps 3 (was 2)"]
    train = json.loads((run / "config.json").read_text())["train"]
    assert (train["model"]["size"], train["optim"]["lr"], train["optim"]["ema"]) == ("DiT-T/2", 3e-4, 0.25)


@pytest.mark.parametrize("text,message", [
    ('[optim]\nlr = "fast"\n', "[optim] lr = 'fast': expected float"),
    ("[optim]\nbatch_size = 4\n", "unknown key [optim] batch_size (its keys: steps, lr,"),
    ("[trainer]\nlr = 1e-4\n", "unknown section [trainer] (sections: data, model, optim, checkpoint, sampling)"),
    ("lr = 1e-4\n", "unknown key lr (at the top: mode, seed; the rest in sections)"),
    ('mode = "t2i"\n', "is a recipe for lumos-train t2i"),
    ("[optim\n", "not TOML"),
    ("[model]\ngrad_checkpointing = 1\n", "[model] grad_checkpointing = 1: expected bool"),
])
def test_a_bad_recipe_is_refused_in_one_line(tmp_path, text, message):
    recipe = tmp_path / "mine.toml"
    recipe.write_text(text)
    code, lines = _invoke("i2i", "--config", str(recipe), "--data", "d", "--output", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_an_unknown_recipe_names_ours(tmp_path):
    code, lines = _invoke("i2i", "--config", "i2i-9000", "--data", "d", "--output", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1, lines
    assert "--config i2i-9000: no such file, nor a recipe of ours (i2i-256, t2i-1024, t2i-1024-ms, t2i-256, t2i-512)" in lines[0]


def test_every_setting_is_an_option_of_some_mode_and_a_recipe_key():
    """The command is generated from the sections: each field is one flag, none restated by hand."""
    from lumos.trainer.config import option_specs

    listed = {name for mode in ("i2i", "t2i") for name, _ in option_specs(mode)}
    assert listed == set(OPTION_FIELDS)
    help_text = CliRunner().invoke(app, ["t2i", "--help"], env={"COLUMNS": "200"}).output
    for name, _ in option_specs("t2i"):
        assert "--" + name.replace("_", "-") in help_text, name
