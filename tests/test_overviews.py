"""The overviews made tile by tile (trainer.overviews) against a plain per-block reference."""

import numpy as np
import pytest

from trainer.overviews import mean2, mode2, overview_sizes


def _blocks(x, nodata):
    h, w = x.shape
    for i in range(0, h, 2):
        for j in range(0, w, 2):
            yield i // 2, j // 2, [int(v) for v in x[i : i + 2, j : j + 2].ravel() if v != nodata]


@pytest.mark.parametrize("shape", [(6, 8), (7, 9), (1, 5)])
def test_mode_and_mean_of_each_block_leave_nodata_out(shape):
    rng = np.random.default_rng(3)
    x = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), size=shape, p=[0.3, 0.3, 0.2, 0.2])
    x[0, :2] = 255  # a block with nodata only where the first row has two
    got_mode, got_mean = mode2(x, 255), mean2(x, 255)
    assert got_mode.shape == got_mean.shape == (-(-shape[0] // 2), -(-shape[1] // 2))
    for i, j, vals in _blocks(x, 255):
        if not vals:
            assert got_mode[i, j] == got_mean[i, j] == 255
            continue
        top = max(vals.count(v) for v in vals)
        assert got_mode[i, j] == next(v for v in vals if vals.count(v) == top)  # first of them
        assert got_mean[i, j] == int(sum(vals) / len(vals) + 0.5)  # half up


def test_a_block_of_four_classes_or_two_pairs_takes_its_first():
    x = np.array([[3, 4, 1, 2], [5, 6, 2, 1]], dtype=np.uint8)
    assert mode2(x, 255).tolist() == [[3, 1]]
    assert mean2(np.array([[100, 99], [255, 255]], dtype=np.uint8), 255).tolist() == [[100]]


def test_levels_are_halved_until_the_larger_side_fits_a_block():
    assert overview_sizes(3000, 3000) == [(1500, 1500), (750, 750), (375, 375)]
    assert overview_sizes(1100, 64) == [(550, 32), (275, 16)]
    assert overview_sizes(512, 300) == []
