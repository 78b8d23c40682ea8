"""Evaluation curves: operating characteristic (paper 000 Eq. 32), robust accuracy, best effort."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantadv.errors import InputError
from quantadv.eval import best_effort, operating_characteristic, robust_accuracy


def test_operating_characteristic_counts_failures_against_the_attack():
    d = [1.0, 2.0, 2.0, 5.0, float("nan")]
    success = [True, True, True, False, False]  # failures may carry any distortion
    th, p = operating_characteristic(d, success, [0.0, 1.0, 1.5, 2.0, 2.5, 100.0])
    # Eq. 32: strict inequality d < d_bar, over all M = 5 images.
    assert p.tolist() == pytest.approx([0, 0, 0.2, 0.2, 0.6, 0.6])
    assert th.dtype == torch.float64 and th.tolist() == [0.0, 1.0, 1.5, 2.0, 2.5, 100.0]
    _, p_inc = operating_characteristic(d, success, [1.0, 2.0], inclusive=True)
    assert p_inc.tolist() == pytest.approx([0.2, 0.6])


def test_operating_characteristic_jump_points_merge_ties():
    th, p = operating_characteristic(
        torch.tensor([3.0, 1.0, 1.0, 7.0]), torch.tensor([True, True, True, False])
    )
    assert th.tolist() == [1.0, 3.0]
    assert p.tolist() == pytest.approx([0.5, 0.75])
    th, p = operating_characteristic([4.0, 9.0], [False, False])
    assert th.numel() == 0 and p.numel() == 0


def test_robust_accuracy_by_hand():
    norms = np.array([0.1, 0.5, 0.0, 2.0, 0.3])
    success = np.array([True, True, True, False, True])
    clean_correct = np.array([True, True, False, True, True])
    acc = robust_accuracy(norms, success, [0.0, 0.1, 0.3, 0.5, 10.0], clean_correct=clean_correct)
    # image 2 is misclassified already; image 3 resists; images 0, 4, 1 fall at 0.1, 0.3, 0.5.
    assert acc.tolist() == pytest.approx([0.8, 0.6, 0.4, 0.2, 0.2])
    assert robust_accuracy(norms, success, [0.0]).tolist() == pytest.approx([0.8])


def test_best_effort_takes_the_lowest_successful_distortion_per_image():
    index = [7, 3, 7, 3, 7, 5]
    d = [4.0, 1.0, 2.0, 0.5, 9.0, 3.0]
    success = [True, True, True, False, False, False]
    images, d_min, ok = best_effort(index, d, success)
    assert images.tolist() == [3, 5, 7]
    assert d_min.tolist() == [1.0, math.inf, 2.0]
    assert ok.tolist() == [True, False, True]
    _, p = operating_characteristic(d_min, ok, [1.5, 3.0])
    assert p.tolist() == pytest.approx([1 / 3, 2 / 3])


def test_curve_input_errors():
    with pytest.raises(InputError, match="entries"):
        operating_characteristic([1.0, 2.0], [True])
    with pytest.raises(InputError, match="NaN or infinite"):
        operating_characteristic([float("nan")], [True])
    with pytest.raises(InputError, match="empty"):
        operating_characteristic([], [])
    with pytest.raises(InputError, match="0/1"):
        operating_characteristic([1.0], [2])
    with pytest.raises(InputError, match="1-D"):
        robust_accuracy([[1.0]], [[True]], [0.1])
    with pytest.raises(InputError, match="eps"):
        robust_accuracy([1.0], [True], [-0.1])
    with pytest.raises(InputError, match="clean_correct"):
        robust_accuracy([1.0], [True], [0.1], clean_correct=[True, False])
    with pytest.raises(InputError, match="index"):
        best_effort([1, 2], [1.0], [True])


_case = st.integers(1, 30).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 50, allow_nan=False), min_size=n, max_size=n),
        st.lists(st.booleans(), min_size=n, max_size=n),
        st.lists(st.floats(0, 60, allow_nan=False), min_size=1, max_size=8),
    )
)


@settings(max_examples=150, deadline=None)
@given(_case)
def test_curves_agree_with_direct_counting(case):
    d, success, thresholds = case
    d_t, s_t = torch.tensor(d, dtype=torch.float64), torch.tensor(success)
    _, strict = operating_characteristic(d, success, thresholds)
    _, inclusive = operating_characteristic(d, success, thresholds, inclusive=True)
    for k, t in enumerate(thresholds):
        assert strict[k] == pytest.approx(float((s_t & (d_t < t)).double().mean()))
        assert inclusive[k] == pytest.approx(float((s_t & (d_t <= t)).double().mean()))
    # With every image correctly classified, robust accuracy is 1 - inclusive P_suc.
    acc = robust_accuracy(d, success, thresholds)
    assert torch.allclose(acc, 1 - inclusive)
    # The jump points reproduce the inclusive curve at every success distortion.
    th, p = operating_characteristic(d, success)
    if th.numel():
        _, again = operating_characteristic(d, success, th, inclusive=True)
        assert torch.allclose(p, again)
        assert bool((p[1:] > p[:-1]).all()) and p[-1] == pytest.approx(float(s_t.double().mean()))


def test_choose_targets_modes():
    """choose_targets: never the label; random is seeded; least-likely is the lowest clean logit."""
    import torch
    from torch import nn

    from quantadv.eval.targets import choose_targets

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 5, (40,))
    r1 = choose_targets(model, images, labels, "random", seed=1, batch_size=7)
    assert torch.equal(r1, choose_targets(model, images, labels, "random", seed=1))
    assert not torch.equal(r1, choose_targets(model, images, labels, "random", seed=2))
    assert (r1 != labels).all() and ((r1 >= 0) & (r1 < 5)).all()
    ll = choose_targets(model, images, labels, "least-likely", batch_size=9)
    with torch.no_grad():
        logits = model(images.float() / 255)
    for i in range(40):
        others = [k for k in range(5) if k != int(labels[i])]
        assert int(ll[i]) == min(others, key=lambda k: float(logits[i, k]))
    assert (choose_targets(model, images, labels, 2) == 2).all()
    assert torch.equal(choose_targets(model, images, labels, "next"), (labels + 1) % 5)
