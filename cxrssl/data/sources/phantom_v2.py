"""Phantom v2 rendering: the v1 anatomy (``phantom.py``) plus what makes the task hard in practice.

Why a second renderer rather than options on the first: the ``easy`` preset must keep producing the
exact bytes it always did (the fast tests and cached sets rely on it), so ``phantom.py`` is left
untouched and this module composes its shape primitives with the v2 additions:

* a heart whose density, texture and edge sharpness vary between patients (a model cannot find the
  heart by one grey level), and borders that are *obscured* by pleural effusion, a pericardial fat
  pad or a film taken in poor inspiration;
* support devices (endotracheal tube, central line, pacemaker with its lead);
* automatic exposure control (the film mean follows the exposure target, not the anatomy),
  collimation (unexposed, bright film edges) and a per-site film: each acquisition :class:`Site`
  has its own characteristic curve, noise level and marker style, so site shift can be studied.

The masks are still the drawn heart and lungs, so the measured CTR stays true to the pixels; the
findings change only what the image *shows*.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cxrssl.data.sources.phantom import (
    _ABDOMEN, _AIR, _MEDIASTINUM, _TISSUE, Acquisition, Anatomy, Phantom, _annotate, _bones, _Canvas,
    _ellipse, _fit_heart, _mirror, _Thorax, _vessels, _xy, measure_ctr, widest_row_width)


@dataclass(frozen=True)
class Site:
    """An acquisition site: film curve, noise and marker habits (``data.synthetic.site``)."""
    name: str
    curve: float  # multiplies the characteristic-curve steepness
    gamma: float  # multiplies the film gamma
    noise: float  # multiplies the quantum noise
    lift: float  # additive brightness of the whole film
    label_box_rate: float  # how often the site burns in a label box


SITES: dict[str, Site] = {
    "A": Site("A", curve=1.0, gamma=1.0, noise=1.0, lift=0.0, label_box_rate=0.3),
    "B": Site("B", curve=0.75, gamma=1.2, noise=1.8, lift=0.05, label_box_rate=0.05),
    "C": Site("C", curve=1.3, gamma=0.85, noise=0.6, lift=-0.04, label_box_rate=0.6),
}


@dataclass(frozen=True)
class Findings:
    """What v2 adds to one film beyond anatomy and pose."""
    site: str
    heart_density: float  # multiplies the mediastinal density of the heart
    heart_texture: float  # amplitude of mottled texture inside the heart
    heart_edge: float  # edge softness (Gaussian sigma, image widths)
    effusion: float  # 0 none; else height of the fluid meniscus (image widths)
    effusion_sides: int  # -1 right, 1 left, 0 both
    fat_pad: float  # 0 none; else radius of the fat pad at the left cardiophrenic angle
    tube: bool  # endotracheal tube
    line: bool  # central venous line (right subclavian → SVC)
    pacemaker: bool  # generator over the left upper chest, lead into the heart
    collimation: tuple[float, float, float, float]  # unexposed margin left, right, top, bottom


def _effusion(c: _Canvas, g: _Thorax, f: Findings) -> np.ndarray:
    """Dependent fluid at the lung bases: dense at the costophrenic angle, fading upwards (meniscus)."""
    layer = c.blank()
    for side in (-1, 1):
        if f.effusion_sides not in (0, side):
            continue
        top = g.cp[side] - f.effusion
        x = np.linspace(g.med * 0.6, g.half + 0.02, 20)
        meniscus = top + 0.5 * f.effusion * ((g.half + 0.02 - x) / (g.half - g.med * 0.6)) ** 1.5
        poly = _xy(np.r_[x, x[::-1]], np.r_[meniscus, np.full(20, g.cp[side] + 0.05)])
        c.fill(_mirror(poly, side), value=1.0, layer=layer)
    return c.blur(layer, 0.02) * 0.32


def _devices(c: _Canvas, g: _Thorax, f: Findings, heart_outline: np.ndarray) -> np.ndarray:
    """Radio-opaque support devices: thin bright lines and a pacemaker generator."""
    layer = c.blank()
    carina = g.apex + 0.17
    if f.tube:
        c.stroke([_xy([0.004, 0.0, 0.0], [-0.1, 0.05, carina - 0.04])], 0.006, 0.55, layer)
    if f.line:
        s = np.linspace(0, 1, 12)
        c.stroke([_xy(-(g.half * 0.8) * (1 - s) - 0.025 * s, g.apex + 0.06 + 0.14 * s ** 1.5)],
                 0.004, 0.5, layer)
    if f.pacemaker:
        box = _xy(np.array([0.6, 0.78, 0.78, 0.6]) * g.half, g.apex + np.array([0.04, 0.04, 0.1, 0.1]))
        c.fill(box, value=0.9, layer=layer)
        apex_x = heart_outline[:, 0].max() - 0.03
        s = np.linspace(0, 1, 14)
        lead = _xy(0.69 * g.half + (apex_x - 0.69 * g.half) * s, g.apex + 0.07 + 0.3 * s + 0.05 * np.sin(np.pi * s))
        c.stroke([lead], 0.004, 0.6, layer)
    return layer


def _collimate(image: np.ndarray, margins, rng: np.random.Generator) -> None:
    """Shutters leave the film edges unexposed: bright, with their own faint noise."""
    n = image.shape[0]
    left, right, top, bottom = (round(m * n) for m in margins)
    mask = np.zeros_like(image, dtype=bool)
    mask[:, :left] = True
    mask[:top] = True
    if right:
        mask[:, n - right:] = True
    if bottom:
        mask[n - bottom:] = True
    if mask.any():
        image[mask] = np.clip(0.92 + rng.normal(0, 0.02, int(mask.sum())), 0, 1)


def render_phantom_v2(anatomy: Anatomy, acq: Acquisition, findings: Findings, size: int = 256) -> Phantom:
    """Draw a v2 film and its masks; the heart is fitted to ``heart_ctr × heart_magnification``."""
    if size < 32:
        raise ValueError(f"native_size {size} is too small for a phantom; use >= 32 pixels")
    rng = np.random.default_rng(acq.seed)
    site, f = SITES[findings.site], findings
    c, g, a = _Canvas(size, acq), _Thorax(anatomy, acq), anatomy
    lungs = c.fill(g.lung(-1), g.lung(1)) > 0
    target_px = max(1, round(a.heart_ctr * acq.heart_magnification * widest_row_width(lungs)))
    heart, outline = _fit_heart(c, a, g, target_px)
    knob_c = (g.med + 0.4 * a.aortic_size, outline[:, 1].min() - 0.02)
    knob = _ellipse(*knob_c, a.aortic_size, 1.1 * a.aortic_size)
    in_heart_columns = heart.any(axis=0)
    bottom = np.where(in_heart_columns, size - 1 - heart[::-1].argmax(axis=0), size)
    under_heart = np.arange(size)[:, None] > bottom[None, :]
    lungs &= ~heart & ~under_heart & ~(c.fill(knob) > 0)

    body_half = g.half + a.soft_tissue
    body = _xy([0.09, 0.1, 0.2, 0.38, 0.5, 0.6, 0.6, body_half + 0.03, body_half + 0.01, body_half - 0.015],
               [-0.1, 0.02, 0.06, 0.075, 0.1, 0.16, 0.34, g.apex + 0.33, g.cp[1], 1.3])
    body_layer = c.fill(np.vstack([_mirror(body[::-1], -1), body]))
    inverse = np.linalg.inv(c.linear).astype(np.float32)
    cols = (np.arange(size, dtype=np.float32) + 0.5 - np.float32(c.origin[0]))[None, :]
    rows = (np.arange(size, dtype=np.float32) + 0.5 - np.float32(c.origin[1]))[:, None]
    px = cols * inverse[0, 0] + rows * inverse[1, 0]
    py = cols * inverse[0, 1] + rows * inverse[1, 1] + np.float32(0.5)
    profile = np.sqrt(np.clip(1 - (px / (body_half + 0.06)) ** 2, 0.1, 1))
    depth = np.clip((py - g.apex) / (g.cp[1] - g.apex), 0, 1)
    upper = np.clip((py - g.apex + 0.05) / 0.3, 0, 1)
    mediastinum = _xy([-0.09, 0.09, g.med * 0.8, g.med * 1.25, -g.med * 1.25, -g.med * 0.8],
                      [-0.1, -0.1, g.apex, g.dome[1] + 0.05, g.dome[-1] + 0.05, g.apex])
    density = c.fill(mediastinum, knob) * (0.45 + 0.27 * upper)
    # the heart: variable density, mottled texture and a soft, variable edge
    cardiac = c.blur((heart | under_heart).astype(np.float32), f.heart_edge)
    mottle = rng.standard_normal((size // 16 + 2, size // 16 + 2)).astype(np.float32)
    mottle = cv2.resize(mottle, (size, size), interpolation=cv2.INTER_CUBIC) * f.heart_texture
    density = density * (1 - cardiac) + cardiac * (_MEDIASTINUM * f.heart_density + mottle)
    np.maximum(density, body_layer * (0.45 + 0.55 * profile) * _TISSUE, out=density)
    abdomen = c.fill(g.diaphragm()) * body_layer * (0.7 + 0.3 * profile) * _ABDOMEN
    np.maximum(density, abdomen, out=density)
    lung_f = lungs.astype(np.float32)
    density -= c.blur(lung_f, 0.003) * (0.85 + 0.3 * depth) * _AIR
    if rng.random() < 0.7:
        density -= c.fill(_ellipse(0.17, g.dome[1] + 0.07, 0.045, 0.025), value=0.22)
    carina = g.apex + 0.17
    bronchi = [_xy([0.0, -0.045], [carina, carina + 0.045]), _xy([0.0, 0.05], [carina, carina + 0.04])]
    airway = c.stroke(bronchi, 0.017, layer=c.stroke([_xy([0.0, 0.0], [-0.1, carina])], 0.032))
    density -= airway * (1 - lung_f) * 0.32
    density += _bones(c, a, acq, g) + _vessels(c, g, rng) * lung_f
    rim = _ellipse(*knob_c, a.aortic_size, 1.1 * a.aortic_size)[20:36]
    density += c.stroke([rim], 0.006, 0.3 * a.calcification)
    if a.breast_size > 0:
        breasts = [_ellipse(side * 0.62 * g.half, g.cp[1] - 0.12, 0.19 * a.breast_size,
                            0.13 * a.breast_size) for side in (-1, 1)]
        density += c.blur(c.fill(*breasts), 0.006) * 0.2 * min(a.breast_size, 1.3)
    if f.effusion > 0:
        density += _effusion(c, g, f) * body_layer
    if f.fat_pad > 0:  # soft density at the left cardiophrenic angle, blurring the apex border
        apex_x = outline[:, 0].max()
        pad = c.fill(_ellipse(apex_x - 0.2 * f.fat_pad, g.dome[1] - 0.2 * f.fat_pad, f.fat_pad, 0.7 * f.fat_pad))
        density += c.blur(pad, 0.012) * 0.18
    density += _devices(c, g, f, outline)
    coarse = rng.standard_normal((size // 8 + 2, size // 8 + 2)).astype(np.float32)
    density += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * 0.025 * body_layer
    density = cv2.GaussianBlur(density, (0, 0), max(acq.blur * size / 256, 0.3))

    k = 2.2 * acq.contrast * site.curve
    image = (1 - np.exp(-k * np.clip(density, 0, None))) / (1 - math.exp(-k))
    image = np.clip(image + acq.exposure + site.lift, 0, 1) ** (acq.gamma * site.gamma)
    image = image + rng.standard_normal(image.shape, np.float32) * np.float32(acq.noise * site.noise)
    # automatic exposure control: the film's mean is set by the exposure target, not by the anatomy
    # (without it a larger heart brightens the film and mean intensity predicts the label)
    image = np.clip(image + np.float32(0.5 + acq.exposure + site.lift - float(image.mean())), 0, 1)
    _collimate(image, f.collimation, rng)
    image_u8 = np.round(image * 255).astype(np.uint8)
    _annotate(image_u8, acq)
    heart_u8, lungs_u8 = heart.astype(np.uint8) * 255, lungs.astype(np.uint8) * 255
    return Phantom(image_u8, heart_u8, lungs_u8, measure_ctr(heart_u8, lungs_u8))
