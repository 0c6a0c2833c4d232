import numpy as np
import pytest

from cxrssl.evaluation import OneClassError, choose_threshold


def rates(y, p, t):
    pred = p >= t
    return pred[y == 1].mean(), (~pred[y == 0]).mean()


def f1_at(y, p, t):
    pred = p >= t
    tp = (pred & (y == 1)).sum()
    return 2 * tp / (pred.sum() + (y == 1).sum())


@pytest.fixture
def scores():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    return y, 1 / (1 + np.exp(-rng.normal(y * 1.3, 1.0)))


def test_youden_hand_checked_case():
    y = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    # t=0.5: sens 4/5, spec 3/3 → J=0.8 ; t=0.3: sens 1, spec 2/3 → J=0.67 ; t=0.6: J=0.6
    assert choose_threshold(y, p, "youden") == 0.5


def test_youden_maximises_j(scores):
    y, p = scores
    chosen = choose_threshold(y, p, "youden")
    j = {t: sum(rates(y, p, t)) - 1 for t in np.unique(p)}
    assert sum(rates(y, p, chosen)) - 1 == pytest.approx(max(j.values()))


def test_f1_maximises_f1(scores):
    y, p = scores
    chosen = choose_threshold(y, p, "f1")
    assert f1_at(y, p, chosen) == pytest.approx(max(f1_at(y, p, t) for t in np.unique(p)))


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_sensitivity_rule_is_highest_threshold_reaching_target(scores, target):
    y, p = scores
    chosen = choose_threshold(y, p, f"sensitivity@{target}")
    assert rates(y, p, chosen)[0] >= target
    higher = np.unique(p[p > chosen])
    assert len(higher) and rates(y, p, higher[0])[0] < target


def test_specificity_rule_is_lowest_threshold_reaching_target(scores):
    y, p = scores
    chosen = choose_threshold(y, p, "specificity@0.9")
    assert rates(y, p, chosen)[1] >= 0.9
    lower = np.unique(p[p < chosen])
    assert rates(y, p, lower[-1])[1] < 0.9


def test_fixed_thresholds_and_errors(scores):
    y, p = scores
    assert choose_threshold(y, p, "0.3") == 0.3
    assert choose_threshold(y, p, 0.7) == 0.7
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        choose_threshold(y, p, 1.5)
    with pytest.raises(ValueError, match="unknown threshold rule 'median'.*youden, f1, sensitivity@X"):
        choose_threshold(y, p, "median")
    with pytest.raises(ValueError, match="not a number"):
        choose_threshold(y, p, "sensitivity@high")
    with pytest.raises(OneClassError):
        choose_threshold(np.zeros(4), p[:4], "youden", split="val")
