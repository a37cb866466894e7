"""loss.png: round ticks inside the data's range on both axes, and a trailing-mean curve over the raw one."""

import pytest
from PIL import Image

from lumos.trainer.metrics import plot_loss, smoothed, ticks


@pytest.mark.parametrize("lo,hi,expected", [(0.09, 1.0, [0.2, 0.4, 0.6, 0.8, 1.0]),
                                            (10, 1000, [200, 400, 600, 800, 1000]),
                                            (0.0633, 0.0688, [0.064, 0.065, 0.066, 0.067, 0.068]),
                                            (3.0, 3.0, [3.0])])
def test_ticks_are_round_and_inside_the_range(lo, hi, expected):
    assert ticks(lo, hi) == pytest.approx(expected)


def test_smoothed_is_the_trailing_mean():
    assert smoothed([1, 2, 3, 4, 10], 2) == [1.0, 1.5, 2.5, 3.5, 7.0]
    assert smoothed([5.0], 4) == [5.0]


def test_plot_draws_the_raw_and_the_smoothed_curve(tmp_path):
    steps = list(range(10, 1001, 10))
    losses = [1 / (1 + s / 100) + (0.05 if s % 20 else 0.0) for s in steps]
    plot_loss(steps, losses, str(tmp_path / "loss.png"))
    image = Image.open(tmp_path / "loss.png").convert("RGB")
    colours = set(image.getdata())
    assert image.size == (720, 400) and (30, 90, 200) in colours and (170, 195, 235) in colours
