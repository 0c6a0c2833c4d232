"""Cohort planning and reader labels for the v2 phantom (``data.synthetic.preset=v2``, the default).

Why it differs from the ``easy`` planner: there, the label is a drawn width with an empty band around
0.5, age drives disease strongly, and the thorax tells the sex at a glance, so a 16 × 16 thumbnail
and a logistic regression beat deep models. Here:

* each patient's true (PA-equivalent) CTR comes from a *continuous* distribution with no gap at 0.5:
  a latent severity score is ranked (films weighted) and mapped through a skewed normal quantile so
  that ``prevalence`` of the films lie above 0.5;
* age and a latent *sickness* enter the severity score only weakly (``age_coupling``; sickness 0.25),
  and the thorax differs by sex by ``sex_coupling`` image widths against a between-person sd of 0.03;
* AP (supine) films are likelier in older and sicker patients (``ap_confounding``), and AP
  magnifies the heart by 10-15 %, raising the *measured* CTR without changing the true label;
* labels come from a simulated reader (:func:`reader_labels`): the reader measures the film,
  corrects only partly for AP magnification, measures with error (twice as large on AP), and
  ``label_noise`` of the films are then flipped at random.

Patients (and their films) are sampled from per-patient random streams, so a patient's films do not
depend on how many other patients exist or on thread scheduling.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from cxrssl.data.sources.phantom import Acquisition, Anatomy
from cxrssl.data.sources.phantom_v2 import SITES, Findings

if TYPE_CHECKING:
    from cxrssl.data.sources.synthetic import ImagePlan, SyntheticSettings

AP_MAGNIFICATION = (1.10, 1.15)
SICKNESS_COUPLING = 0.25  # correlation of the latent sickness with the severity score


def _logistic(x):
    return 1 / (1 + np.exp(-x))


def ctr_from_quantile(u: np.ndarray, prevalence: float) -> np.ndarray:
    """PA-equivalent CTR of severity quantile ``u``: continuous through 0.5, skewed to the right
    (enlarged hearts spread further than healthy ones), ``P(CTR > 0.5) = prevalence``."""
    z = stats.norm.ppf(np.clip(u, 1e-6, 1 - 1e-6))
    z0 = stats.norm.ppf(np.clip(1 - prevalence, 1e-6, 1 - 1e-6))
    return np.clip(0.5 + 0.045 * (z - z0) + 0.03 * np.maximum(z - z0, 0), 0.3, 0.72)


def _site_code(site: str | None) -> int:
    return 0 if site is None else 1 + sorted(SITES).index(site)


def plan_cohort_v2(s: SyntheticSettings, pool: bool) -> list[ImagePlan]:
    """Plans of the labelled cohort (``pool=False``) or of the unlabelled pool (``pool=True``)."""
    from cxrssl.data.sources.synthetic import ImagePlan

    n = s.unlabelled_patients() if pool else s.n_patients
    code = _site_code(s.site)
    stream = 10 if pool else 0
    rng = np.random.default_rng([s.seed, stream, code])
    ages = np.clip(np.round(rng.normal(55, 17, n)), 18, 90).astype(int)
    sexes = np.where(rng.random(n) < 0.55, "M", "F")
    counts = rng.integers(s.images_per_patient[0], s.images_per_patient[1] + 1, n)
    sick = rng.standard_normal(n)
    age_z = (ages - 55) / 17
    rest = max(1 - s.age_coupling ** 2 - SICKNESS_COUPLING ** 2, 0.0) ** 0.5
    score = s.age_coupling * age_z + SICKNESS_COUPLING * sick + rest * rng.standard_normal(n)
    order = np.argsort(score, kind="stable")
    before = np.concatenate([[0], np.cumsum(counts[order])[:-1]])
    quantile = np.empty(n)
    quantile[order] = (before + counts[order] / 2) / counts.sum()
    base_ctr = ctr_from_quantile(quantile, s.prevalence)
    sites = [s.site] * n if s.site else [s.sites[int(k)] for k in rng.integers(0, len(s.sites), n)]
    prefix = (s.site or "") + ("U" if pool else "P")
    ap_logit = np.log(s.ap_fraction / (1 - s.ap_fraction)) if 0 < s.ap_fraction < 1 else None
    plans: list[ImagePlan] = []
    for i in range(n):
        prng = np.random.default_rng([s.seed, stream + 1, code, i])
        if ap_logit is None:
            p_ap = s.ap_fraction
        else:
            p_ap = float(_logistic(ap_logit + s.ap_confounding * (0.5 * age_z[i] + 0.5 * sick[i])))
        anatomy = _anatomy(prng, int(ages[i]), str(sexes[i]), float(base_ctr[i]), s.sex_coupling, sick[i])
        patient = _patient_findings(prng, sick[i])
        patient_id = f"{prefix}{i:05d}"
        for k in range(counts[i]):
            ap = bool(prng.random() < p_ap)
            acq = _acquisition(prng, ap, s.markers, SITES[sites[i]].label_box_rate, sick[i])
            film = dataclasses.replace(
                anatomy, heart_ctr=float(base_ctr[i] * (1 + prng.normal(0, 0.008))),
                thorax_width=anatomy.thorax_width * (1 + prng.normal(0, 0.006)),
                heart_height=anatomy.heart_height * (1 + prng.normal(0, 0.01)))
            findings = _film_findings(prng, patient, sites[i], ap, sick[i], s.devices)
            plans.append(ImagePlan(f"{patient_id}_{k}", patient_id, film, acq, findings))
    return plans


def _anatomy(rng: np.random.Generator, age: int, sex: str, ctr: float, sex_coupling: float,
             sick: float) -> Anatomy:
    old = (age - 18) / 72
    male = sex == "M"
    aging = np.clip((age - 35) / 55, 0, 1)
    half = sex_coupling / 2 if male else -sex_coupling / 2
    return Anatomy(
        sex=sex, age=float(age),
        thorax_width=0.68 + half + 0.01 * old + rng.normal(0, 0.03),
        thorax_height=0.53 + half / 2 + 0.02 * old + rng.normal(0, 0.025),
        apex_y=0.12 + rng.normal(0, 0.012),
        dome_height=0.065 - 0.02 * old + rng.normal(0, 0.01),
        dome_asymmetry=0.02 + rng.normal(0, 0.008),
        mediastinum_half=0.06 + 0.008 * old + rng.normal(0, 0.006),
        heart_ctr=ctr, heart_height=0.13 + rng.normal(0, 0.018), heart_tilt=rng.uniform(12, 42),
        bone_density=1.0 - (0.3 if male else 0.4) * aging + rng.normal(0, 0.08),
        calcification=float(np.clip((age - 35) / 50, 0, 1) ** 1.3 * rng.uniform(0.3, 1.2)),
        aortic_size=0.024 + 0.01 * old + rng.normal(0, 0.004),
        breast_size=float(rng.uniform(0.0, 0.5) if male and rng.random() < 0.15 else
                          (0.0 if male else rng.uniform(0.5, 1.4))),
        soft_tissue=0.05 + rng.normal(0, 0.015))


def _patient_findings(rng: np.random.Generator, sick: float) -> dict:
    """Per-patient traits that stay the same on every film."""
    return {"heart_density": rng.uniform(0.8, 1.1), "heart_texture": rng.uniform(0.0, 0.06),
            "fat_pad": rng.uniform(0.03, 0.06) if rng.random() < 0.25 else 0.0,
            "pacemaker": bool(rng.random() < _logistic(-3.2 + 0.6 * sick)),
            "effusion_prone": float(_logistic(-2.0 + 0.8 * sick))}


def _film_findings(rng: np.random.Generator, patient: dict, site: str, ap: bool, sick: float,
                   devices: bool) -> Findings:
    effusion = rng.uniform(0.02, 0.09) if rng.random() < patient["effusion_prone"] else 0.0
    margins = tuple(float(rng.uniform(0, 0.08)) if rng.random() < 0.5 else 0.0 for _ in range(4))
    icu = ap and rng.random() < _logistic(-1.0 + 0.8 * sick)
    return Findings(
        site=site, heart_density=patient["heart_density"], heart_texture=patient["heart_texture"],
        heart_edge=rng.uniform(0.001, 0.008), effusion=float(effusion),
        effusion_sides=int(rng.integers(-1, 2)), fat_pad=patient["fat_pad"],
        tube=bool(devices and icu and rng.random() < 0.6), line=bool(devices and icu and rng.random() < 0.7),
        pacemaker=bool(devices and patient["pacemaker"]), collimation=margins)


def _acquisition(rng: np.random.Generator, ap: bool, markers: bool, box_rate: float,
                 sick: float) -> Acquisition:
    letter = ("R" if rng.random() < 0.5 else "L") if markers and rng.random() < 0.75 else ""
    return Acquisition(
        view="AP" if ap else "PA",
        heart_magnification=rng.uniform(*AP_MAGNIFICATION) if ap else 1.0,
        rotation_deg=rng.uniform(-6, 6), shift_x=rng.normal(0, 0.025), shift_y=rng.normal(0, 0.025),
        scale=rng.uniform(0.88, 1.06) * (1.03 if ap else 1.0),
        inspiration=rng.normal(0, 0.02) - (0.025 if ap else 0.0) - 0.01 * max(sick, 0),
        exposure=rng.uniform(-0.15, 0.15), contrast=rng.uniform(0.7, 1.35),
        gamma=rng.uniform(0.75, 1.35), noise=rng.uniform(0.005, 0.03), blur=rng.uniform(0.8, 2.2),
        marker=letter, marker_corner=(0 if letter == "R" else 1) + 2 * int(rng.random() < 0.2),
        label_box=bool(markers and rng.random() < box_rate), seed=int(rng.integers(2**63)))


def reader_labels(true_ctr: np.ndarray, magnification: np.ndarray, ap: np.ndarray,
                  s: SyntheticSettings) -> np.ndarray:
    """The simulated reader's call per film: a noisy, partly AP-corrected measurement > 0.5, then
    ``label_noise`` of the films flipped (an exact count, chosen at random)."""
    rng = np.random.default_rng([s.seed, 3, _site_code(s.site)])
    seen = true_ctr * magnification ** (1 - s.reader_ap_correction)
    sd = s.reader_noise * np.where(ap, 2.0, 1.0)
    label = (seen + rng.normal(0, 1, len(seen)) * sd > 0.5).astype(int)
    flipped = np.zeros(len(label), bool)
    flipped[rng.choice(len(label), round(s.label_noise * len(label)), replace=False)] = True
    return np.where(flipped, 1 - label, label)
