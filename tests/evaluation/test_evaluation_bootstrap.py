import time

import numpy as np
import pandas as pd
import pytest
from tests.evaluation.helpers import synthetic_predictions
from scipy.special import expit
from scipy.stats import norm

from cxrssl.evaluation import METRIC_NAMES, OneClassError, bootstrap_ci


def binormal_study(n: int, separation: float, rng: np.random.Generator) -> pd.DataFrame:
    """One image per patient; population AUROC = Φ(separation / √2)."""
    y = np.r_[np.zeros(n // 2), np.ones(n - n // 2)]
    score = rng.normal(y * separation, 1.0)
    return pd.DataFrame({"image_id": np.arange(n).astype(str), "patient_id": np.arange(n).astype(str),
                         "probability": expit(score), "label": y})


def test_ci_covers_population_auroc():
    separation = 1.2
    true_auroc = norm.cdf(separation / np.sqrt(2))
    rng = np.random.default_rng(0)
    repetitions, covered = 30, 0
    for rep in range(repetitions):
        ci = bootstrap_ci(binormal_study(200, separation, rng), 0.5, n_boot=400, seed=rep)
        _, lo, hi = ci["auroc"]
        covered += lo <= true_auroc <= hi
    assert covered / repetitions >= 0.8


def test_ci_width_shrinks_with_sample_size():
    rng = np.random.default_rng(1)
    widths = {}
    for n in (100, 1000):
        ci = bootstrap_ci(binormal_study(n, 1.0, rng), 0.5, n_boot=500, seed=0)
        widths[n] = {m: ci[m][2] - ci[m][1] for m in ("auroc", "sensitivity", "brier")}
    for metric in ("auroc", "sensitivity", "brier"):
        assert widths[1000][metric] < 0.6 * widths[100][metric], metric


def test_every_metric_has_point_inside_interval(predictions):
    ci = bootstrap_ci(predictions, 0.5, n_boot=300, seed=0)
    assert list(ci) == list(METRIC_NAMES)
    for metric, (point, lo, hi) in ci.items():
        assert lo <= point <= hi, metric
    assert ci.info["n_valid"] == 300 and ci.info["n_clusters"] == 300 and ci.info["n_images"] == 600


def test_cluster_bootstrap_is_wider_than_image_bootstrap_for_duplicated_patients():
    """Four near-identical images per patient: resampling images pretends n is 4× larger."""
    predictions = synthetic_predictions(n_patients=150, images_per_patient=4, seed=2)
    by_patient = bootstrap_ci(predictions, 0.5, n_boot=500, seed=0, cluster="patient_id")
    by_image = bootstrap_ci(predictions, 0.5, n_boot=500, seed=0, cluster=None)
    width = {name: ci["auroc"][2] - ci["auroc"][1] for name, ci in
             (("patient", by_patient), ("image", by_image))}
    assert width["patient"] > 1.5 * width["image"]
    assert by_patient["auroc"][0] == by_image["auroc"][0]  # same point estimate


def test_one_class_resamples_are_redrawn_and_counted():
    df = pd.DataFrame({"image_id": list("abcdefghij"), "patient_id": list("abcdefghij"),
                       "probability": np.linspace(0.05, 0.95, 10), "label": [0.0] * 9 + [1.0]})
    ci = bootstrap_ci(df, 0.5, n_boot=200, seed=0)
    assert ci.info["n_redrawn"] > 0  # a single positive is missed by ~35 % of resamples
    assert ci.info["n_valid"] == 200 and ci.info["n_skipped"] == 0


def test_one_class_split_raises(predictions):
    predictions["label"] = 0.0
    with pytest.raises(OneClassError, match="split 'val'.*class 0"):
        bootstrap_ci(predictions, 0.5, n_boot=10, split="val")


def test_seed_reproducible_and_bca_option(predictions):
    a = bootstrap_ci(predictions, 0.5, n_boot=200, seed=7)
    b = bootstrap_ci(predictions, 0.5, n_boot=200, seed=7)
    c = bootstrap_ci(predictions, 0.5, n_boot=200, seed=8)
    assert a == b and a["auroc"] != c["auroc"]
    bca = bootstrap_ci(predictions, 0.5, n_boot=200, seed=7, method="bca")
    assert bca["auroc"][1] < bca["auroc"][0] < bca["auroc"][2]
    assert bca["auroc"][1:] != a["auroc"][1:]
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(predictions, 0.5, method="studentized")
    with pytest.raises(ValueError, match="cluster column 'visit'"):
        bootstrap_ci(predictions, 0.5, cluster="visit")


def test_thousand_resamples_of_600_images_are_fast(predictions):
    start = time.perf_counter()
    ci = bootstrap_ci(predictions, 0.5, n_boot=1000, seed=0)
    elapsed = time.perf_counter() - start
    print(f"1000 cluster resamples, 600 images / 300 patients: {elapsed:.2f} s")
    assert ci.info["n_valid"] == 1000
    assert elapsed < 10.0
