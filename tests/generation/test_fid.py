"""FID: our Fréchet distance against a plain numpy/scipy reference, FID(x, x) = 0, the reference statistics
cache (reused, invalidated when the table changes), and `lumos-eval fid` from a DiT-T/2 run end to end with
pytorch-fid's network (random weights written to a file: the real ones cannot be fetched here)."""

import json
import os
import shutil

import lance
import numpy as np
import pytest
import torch
from scipy import linalg
from typer.testing import CliRunner

from lumos.curation.sample import encode, synthetic_image
from lumos.generation.eval_cli import app
from lumos.generation.fid import frechet_distance, statistics


def reference_fid(x, y):
    """The textbook formula with scipy's general matrix square root (as pytorch-fid / the TF original)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


def test_frechet_distance_matches_numpy_scipy_and_is_zero_on_itself():
    for n, d, shift in ((400, 32, 0.3), (1000, 64, 0.0), (300, 128, 1.0)):  # the last: rank-deficient covariances
        x, y = _features(n, d, 1), _features(n, d, 2, shift)
        ours = frechet_distance(*statistics(x), *statistics(y))
        assert abs(ours - reference_fid(x, y)) < 1e-3, (ours, reference_fid(x, y))
        assert ours > 0.1
        assert abs(frechet_distance(*statistics(x), *statistics(x))) < 1e-6


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """pytorch-fid's FID Inception architecture with seeded random weights, saved as its weights file would be."""
    from pytorch_fid import inception as pf

    torch.manual_seed(0)
    net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in (("Mixed_5b", pf.FIDInceptionA(192, pool_features=32)),
                        ("Mixed_5c", pf.FIDInceptionA(256, pool_features=64)),
                        ("Mixed_5d", pf.FIDInceptionA(288, pool_features=64)),
                        ("Mixed_6b", pf.FIDInceptionC(768, channels_7x7=128)),
                        ("Mixed_6c", pf.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6d", pf.FIDInceptionC(768, channels_7x7=160)),
                        ("Mixed_6e", pf.FIDInceptionC(768, channels_7x7=192)),
                        ("Mixed_7b", pf.FIDInceptionE_1(1280)), ("Mixed_7c", pf.FIDInceptionE_2(2048))):
        setattr(net, name, block)
    for m in net.modules():  # He init: activations keep their scale through the 90-odd layers (PyTorch's
        if isinstance(m, torch.nn.Conv2d):  # default init shrinks them to ~1e-7 and every FID to ~1e-13)
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def _eval(*args):
    result = CliRunner().invoke(app, ["fid", *args])
    assert result.exit_code in (0, 2), result.exception
    if result.exit_code == 0:  # the JSON result is stdout's last line (progress bars go to stderr)
        return 0, [line for line in result.stdout.splitlines() if line.strip()]
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def test_two_sets_and_the_statistics_cache(feature_table, inception_weights, tmp_path):
    table = str(tmp_path / "images.lance")
    shutil.copytree(os.path.join(os.path.dirname(feature_table), "curated", "images.lance"), table)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i:02d}.png").write_bytes(encode(synthetic_image(200 + 7 * i, 180, seed=50 + i), "PNG"))
    cache = str(tmp_path / "cache")
    common = ["--inception", inception_weights, "--cache-dir", cache, "--resolution", "64", "--device", "cpu"]

    code, lines = _eval("--a", str(folder), "--b", str(folder), *common)
    assert code == 0, lines
    same = json.loads(lines[-1])
    assert abs(same["fid"]) < 1e-6 and same["num_a"] == 12 and same["cached"] == [False, True]

    code, lines = _eval("--a", table, "--b", str(folder), *common)
    first = json.loads(lines[-1])
    assert code == 0 and first["fid"] > 0.1 and first["cached"] == [False, True] and first["num_a"] == 24
    assert len(os.listdir(cache)) == 2
    code, lines = _eval("--a", table, "--b", str(folder), *common)
    again = json.loads(lines[-1])
    assert again["cached"] == [True, True] and again["fid"] == first["fid"]  # reused, not recomputed

    ds = lance.dataset(table)
    ds.delete(f"id = '{ds.to_table(columns=['id'], limit=1)['id'][0].as_py()}'")  # the reference changes
    code, lines = _eval("--a", table, "--b", str(folder), *common)
    changed = json.loads(lines[-1])
    assert changed["cached"] == [False, True] and changed["num_a"] == 23 and changed["fid"] != first["fid"]
    assert len(os.listdir(cache)) == 3


def test_fid_of_a_run_against_a_reference_table(sample_runs, feature_table, inception_weights, tmp_path):
    table = os.path.join(os.path.dirname(feature_table), "curated", "images.lance")
    common = ["--reference", table, "--num", "6", "--batch-size", "4", "--steps", "2", "--inception",
              inception_weights, "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    for mode in ("i2i", "t2i"):
        code, lines = _eval("--checkpoint", sample_runs[mode], *common, "--save-samples", str(tmp_path / mode),
                            "--output", str(tmp_path / f"{mode}.json"))
        assert code == 0, lines
        result = json.loads(lines[-1])
        assert result == json.loads((tmp_path / f"{mode}.json").read_text())
        assert np.isfinite(result["fid"]) and result["fid"] > 1  # noise-like samples against the images
        assert result["num_generated"] == 6 and result["num_reference"] == 6 and result["resolution"] == 256
        assert sorted(os.listdir(tmp_path / mode)) == [f"{i:06d}.png" for i in range(6)]
    assert result["reference_stats_cached"]  # the second run reused the first run's reference statistics
    code, lines = _eval("--checkpoint", sample_runs["i2i"], "--a", table, *common[2:])
    assert code == 2 and "--checkpoint needs --reference" in lines[-1]


def test_inception_weights_that_cannot_be_used_fail_in_one_line(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    for i in range(2):
        (folder / f"{i}.png").write_bytes(encode(synthetic_image(90, 80, seed=i), "PNG"))
    torch.save({"x": torch.zeros(2)}, tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("{}")
    for weights, message in ((tmp_path / "missing.pth", "cannot read it as a weights file"),
                             (tmp_path / "text.pth", "cannot read it as a weights file"),
                             (tmp_path / "other.pth", "not the FID Inception's weights")):
        code, lines = _eval("--a", str(folder), "--b", str(folder), "--inception", str(weights),
                            "--cache-dir", str(tmp_path / "cache"))
        assert code == 2 and len(lines) == 1 and message in lines[0], lines


def test_features_and_distance_are_pytorch_fids(inception_weights, tmp_path):
    """The same weights file through pytorch-fid's own statistics and distance: the same numbers."""
    from pytorch_fid import fid_score

    from lumos.generation.fid import Inception, ImageSet, cached_statistics

    sets = []
    for name, seed in (("x", 0), ("y", 100)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(6):  # already square at the resolution: our crop/resize is a no-op, as in pytorch-fid
            (folder / f"{i}.png").write_bytes(encode(synthetic_image(64, 64, seed=seed + i), "PNG"))
        sets.append(folder)
    ours = Inception(inception_weights)
    stats = [cached_statistics(ImageSet(str(f)), ours, 6, 64, str(tmp_path / "cache"))[:2] for f in sets]
    theirs = [fid_score.calculate_activation_statistics(sorted(str(p) for p in f.iterdir()), ours.net, batch_size=4,
                                                        device="cpu", num_workers=0) for f in sets]
    for (mu, sigma), (their_mu, their_sigma) in zip(stats, theirs):
        assert np.abs(mu - their_mu).max() <= 1e-5 * np.abs(their_mu).max()
        assert np.abs(sigma - their_sigma).max() <= 1e-5 * np.abs(their_sigma).max()
    reference = fid_score.calculate_frechet_distance(*theirs[0], *theirs[1])
    assert reference > 0.1 and abs(frechet_distance(*stats[0], *stats[1]) - reference) < 1e-3
