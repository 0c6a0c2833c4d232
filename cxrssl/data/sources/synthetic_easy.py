"""Cohort planning of the ``easy`` preset (``data.synthetic.preset=easy``): the original generator.

Kept byte-for-byte as it was (same random streams, same order of draws) so the fast tests, which
need a task a tiny model learns in seconds, and cached sets stay valid. Its shortcuts (a 1 % CTR gap
at 0.5, age driving disease, sex visible from the chest width) are documented in docs/synthetic.md;
the default ``v2`` preset (``synthetic_v2.py``) removes them.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from cxrssl.data.sources.phantom import Acquisition, Anatomy

if TYPE_CHECKING:
    from cxrssl.data.sources.synthetic import ImagePlan, SyntheticSettings

NEGATIVE_CAP = 0.495  # drawn CTR ceiling for negatives (~1 px margin below 0.5 at 256 px)
POSITIVE_FLOOR = 0.505
AP_MAGNIFICATION = (1.10, 1.15)


def _sample_anatomy(rng: np.random.Generator, age: int, sex: str, ctr: float) -> Anatomy:
    old = (age - 18) / 72  # 0 at 18, 1 at 90
    male = sex == "M"
    aging = np.clip((age - 35) / 55, 0, 1)
    return Anatomy(
        sex=sex, age=float(age),
        thorax_width=(0.72 if male else 0.64) + 0.03 * old + rng.normal(0, 0.018),
        thorax_height=(0.55 if male else 0.51) + 0.03 * old + rng.normal(0, 0.012),
        apex_y=0.12 + rng.normal(0, 0.008),
        dome_height=0.07 - 0.03 * old + rng.normal(0, 0.006),
        dome_asymmetry=0.02 + rng.normal(0, 0.006),
        mediastinum_half=0.06 + 0.012 * old + rng.normal(0, 0.003),
        heart_ctr=ctr, heart_height=0.13 + rng.normal(0, 0.012), heart_tilt=rng.uniform(18, 38),
        bone_density=1.0 - (0.35 if male else 0.55) * aging + rng.normal(0, 0.04),
        calcification=float(np.clip((age - 35) / 50, 0, 1) ** 1.3 * rng.uniform(0.7, 1.2)),
        aortic_size=0.022 + 0.016 * old + rng.normal(0, 0.002),
        breast_size=0.0 if male else rng.uniform(0.75, 1.25),
        soft_tissue=0.05 + (0.01 if not male else 0.0) + rng.normal(0, 0.008))


def _sample_acquisition(rng: np.random.Generator, ap: bool, markers: bool) -> Acquisition:
    letter = ("R" if rng.random() < 0.5 else "L") if markers and rng.random() < 0.75 else ""
    return Acquisition(
        view="AP" if ap else "PA",
        heart_magnification=rng.uniform(*AP_MAGNIFICATION) if ap else 1.0,
        rotation_deg=rng.uniform(-3, 3), shift_x=rng.normal(0, 0.012), shift_y=rng.normal(0, 0.012),
        scale=rng.uniform(0.96, 1.03) * (1.03 if ap else 1.0),
        inspiration=rng.normal(0, 0.01) - (0.025 if ap else 0.0),
        exposure=rng.uniform(-0.07, 0.07), contrast=rng.uniform(0.85, 1.2),
        gamma=rng.uniform(0.8, 1.25), noise=rng.uniform(0.004, 0.02), blur=rng.uniform(0.9, 1.7),
        marker=letter, marker_corner=(0 if letter == "R" else 1) + 2 * int(rng.random() < 0.2),
        label_box=bool(markers and rng.random() < 0.3), seed=int(rng.integers(2**63)))


def _choose_positive_patients(rng, ages: np.ndarray, counts: np.ndarray, prevalence: float):
    """Age-weighted draw of patients (older = likelier) until their images reach the prevalence."""
    weights = np.exp(0.6 * (ages - 52) / 17)
    keys = rng.random(len(ages)) ** (1 / weights)  # Efraimidis-Spirakis weighted order
    order = np.argsort(-keys, kind="stable")
    reached = np.concatenate([[0], np.cumsum(counts[order])])
    take = int(np.argmin(np.abs(reached - prevalence * counts.sum())))
    positive = np.zeros(len(ages), bool)
    positive[order[:take]] = True
    return positive


def plan_easy(settings: SyntheticSettings) -> list[ImagePlan]:
    """Every image's anatomy and acquisition, sampled in a fixed order from ``settings.seed``."""
    from scipy.stats import truncnorm

    from cxrssl.data.sources.synthetic import ImagePlan

    s, rng = settings, np.random.default_rng([settings.seed, 0])
    n = s.n_patients
    ages = np.clip(np.round(rng.normal(52, 17, n)), 18, 90).astype(int)
    sexes = np.where(rng.random(n) < 0.55, "M", "F")
    counts = rng.integers(s.images_per_patient[0], s.images_per_patient[1] + 1, n)
    positive = _choose_positive_patients(rng, ages, counts, s.prevalence)
    plans: list[ImagePlan] = []
    for i in range(n):
        prng = np.random.default_rng([s.seed, 1, i])
        ap = prng.random(counts[i]) < s.ap_fraction
        acqs = [_sample_acquisition(prng, bool(v), s.markers) for v in ap]
        worst = max(a.heart_magnification for a in acqs)
        old = (ages[i] - 18) / 72
        if positive[i]:
            base = min(POSITIVE_FLOOR + 0.14 * prng.beta(1.2, 2.5) + 0.02 * old, 0.65)
        else:  # mean 0.41 at 18 → 0.47 at 90, truncated so even the AP films stay negative
            mean, upper = 0.41 + 0.06 * old, NEGATIVE_CAP / worst
            base = truncnorm.rvs((0.34 - mean) / 0.03, (upper - mean) / 0.03, loc=mean,
                                 scale=0.03, random_state=prng)
        anatomy = _sample_anatomy(prng, int(ages[i]), str(sexes[i]), float(base))
        patient_id = f"P{i:05d}"
        for k, acq in enumerate(acqs):
            ctr = base * (1 + prng.normal(0, 0.008))
            cap = NEGATIVE_CAP / acq.heart_magnification
            ctr = max(ctr, POSITIVE_FLOOR) if positive[i] else min(ctr, cap)
            drift = dataclasses.replace(
                anatomy, heart_ctr=float(ctr),
                thorax_width=anatomy.thorax_width * (1 + prng.normal(0, 0.006)),
                heart_height=anatomy.heart_height * (1 + prng.normal(0, 0.01)))
            plans.append(ImagePlan(f"{patient_id}_{k}", patient_id, drift, acq))
    return plans
