"""Draw one frontal chest radiograph phantom (image + heart and lung masks) from parameters.

Shapes are built in *patient coordinates* — x is the signed offset from the midline (positive =
patient's left = image right, as on a PA film), y points down, both in image widths — and pushed
through the acquisition's pose before rasterising. Masks therefore stay crisp, and the heart is
drawn to an exact pixel width, so the cardiothoracic ratio measured back from the saved masks is the
ground truth (:func:`measure_ctr`). Randomness lives in the parameters (sampled in ``synthetic.py``)
plus ``Acquisition.seed`` for noise and vessel texture: same parameters → same bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for cv2 polygon vertices
_TISSUE, _MEDIASTINUM, _ABDOMEN, _AIR = 0.42, 0.72, 0.7, 0.3  # water-equivalent densities


@dataclass(frozen=True)
class Anatomy:
    """One patient's body (lengths in image widths); images of a patient share it up to drift."""
    sex: str  # "M" | "F"
    age: float  # years
    thorax_width: float  # widest inner thoracic diameter
    thorax_height: float  # lung apex to the right diaphragm dome
    apex_y: float  # lung apex height
    dome_height: float  # rise of a diaphragm dome above its costophrenic angle (flatter when old)
    dome_asymmetry: float  # left dome lies this much lower than the right
    mediastinum_half: float  # half-width of the upper mediastinum
    heart_ctr: float  # cardiothoracic ratio the heart is drawn to on a PA film
    heart_height: float  # semi-height of the cardiac silhouette
    heart_tilt: float  # degrees the long axis dips towards the apex
    bone_density: float  # ~1 young adult, lower with age (osteopenia)
    calcification: float  # 0..1: costal cartilage and aortic-knob calcification
    aortic_size: float  # radius of the aortic knob (unfolds with age)
    breast_size: float  # 0 for males
    soft_tissue: float  # chest-wall thickness outside the ribs


@dataclass(frozen=True)
class Acquisition:
    """How one film was taken: projection, pose, exposure and burned-in annotations."""
    view: str  # "PA" | "AP"
    heart_magnification: float  # 1 on PA; 1.10-1.15 on AP (heart far from the detector)
    rotation_deg: float
    shift_x: float
    shift_y: float
    scale: float
    inspiration: float  # + = deeper breath, lower diaphragm
    exposure: float  # additive brightness
    contrast: float
    gamma: float
    noise: float  # std of quantum noise in [0, 1] intensity
    blur: float  # focal-spot / screen unsharpness, pixels at 256 px
    marker: str  # "" | "L" | "R"
    marker_corner: int  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    label_box: bool
    seed: int


@dataclass(frozen=True)
class Phantom:
    image: np.ndarray  # uint8 H×W
    heart: np.ndarray  # uint8 0/255
    lungs: np.ndarray  # uint8 0/255, both lungs, heart excluded
    ctr: float  # measured from the two masks


def widest_row_width(mask: np.ndarray) -> int:
    """Largest (last − first + 1) nonzero column span over the rows of ``mask``."""
    on = np.asarray(mask) > 0
    rows = on.any(axis=1)
    if not rows.any():
        return 0
    first = on.argmax(axis=1)
    last = on.shape[1] - 1 - on[:, ::-1].argmax(axis=1)
    return int((last - first + 1)[rows].max())


def measure_ctr(heart_mask: np.ndarray, lung_mask: np.ndarray) -> float:
    """Cardiothoracic ratio: widest heart row / widest row spanned by the lungs."""
    thorax = widest_row_width(lung_mask)
    if thorax == 0:
        raise ValueError("lung mask is empty; cannot measure the thoracic diameter")
    return widest_row_width(heart_mask) / thorax


class _Canvas:
    """Rasterises patient-coordinate shapes through the pose into float32 layers."""

    def __init__(self, size: int, acq: Acquisition):
        self.size, self.px_per_unit = size, size * acq.scale
        t, s = math.radians(acq.rotation_deg), self.px_per_unit
        self.linear = np.array([[s * math.cos(t), s * math.sin(t)], [-s * math.sin(t), s * math.cos(t)]])
        self.origin = np.array([size * (0.5 + acq.shift_x), size * (0.5 + acq.shift_y)])

    def to_pixels(self, pts: np.ndarray) -> np.ndarray:
        return (pts - (0.0, 0.5)) @ self.linear + self.origin - 0.5

    def _fixed(self, shapes) -> list[np.ndarray]:
        """All shapes in one affine call (per-call overhead dominates for small polygons)."""
        ends = np.cumsum([len(p) for p in shapes]).tolist()
        fixed = np.round(self.to_pixels(np.concatenate(shapes)) * (1 << _SHIFT)).astype(np.int32)
        return [fixed[start:end] for start, end in zip([0] + ends[:-1], ends)]

    def blank(self) -> np.ndarray:
        return np.zeros((self.size, self.size), np.float32)

    def fill(self, *polygons: np.ndarray, value: float = 1.0, layer: np.ndarray | None = None):
        layer = self.blank() if layer is None else layer
        cv2.fillPoly(layer, self._fixed(polygons), float(value), cv2.LINE_8, _SHIFT)
        return layer

    def stroke(self, lines: list[np.ndarray], width: float, value: float = 1.0,
               layer: np.ndarray | None = None) -> np.ndarray:
        layer = self.blank() if layer is None else layer
        thickness = max(1, round(width * self.px_per_unit))
        cv2.polylines(layer, self._fixed(lines), False, float(value), thickness,
                      cv2.LINE_AA, _SHIFT)
        return layer

    def blur(self, layer: np.ndarray, sigma: float) -> np.ndarray:
        """Gaussian blur with ``sigma`` in image widths."""
        return cv2.GaussianBlur(layer, (0, 0), max(sigma * self.size, 0.3))


def _xy(x, y) -> np.ndarray:
    x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    out = np.empty(x.shape + (2,))
    out[..., 0], out[..., 1] = x, y
    return out


_CIRCLE = np.exp(1j * np.linspace(0, 2 * np.pi, 40, endpoint=False))


def _ellipse(cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return _xy(cx + ax * _CIRCLE.real, cy + ay * _CIRCLE.imag)


def _mirror(pts: np.ndarray, side: int) -> np.ndarray:
    return pts * (side, 1)


class _Thorax:
    """Lung-field geometry of one film: apex, domes, costophrenic angles, lateral walls."""

    def __init__(self, a: Anatomy, acq: Acquisition):
        self.apex = a.apex_y
        lower = a.apex_y + a.thorax_height + acq.inspiration
        self.dome = {-1: lower, 1: lower + a.dome_asymmetry}  # -1 patient right, +1 left
        self.cp = {s: d + a.dome_height for s, d in self.dome.items()}
        self.half, self.med = a.thorax_width / 2, a.mediastinum_half
        self.t = np.linspace(0, 1, 28)
        self.profile = 0.28 + 0.72 * np.sin(np.pi / 2 * np.clip(self.t / 0.75, 0, 1)) ** 0.7

    def lateral(self, y: np.ndarray | float, side: int = 1) -> np.ndarray:
        ys = self.apex + self.t * (self.cp[side] - self.apex)
        return np.interp(y, ys, self.med + (self.half - self.med) * self.profile)

    def lung(self, side: int) -> np.ndarray:
        t, cp, dome = self.t, self.cp[side], self.dome[side]
        lat = self.med + (self.half - self.med) * self.profile
        medial = self.med * (0.75 + 0.5 * t)
        r = (lat[0] - medial[0]) / 2
        a = np.linspace(np.pi, 0, 14)
        cap = _xy(medial[0] + r + r * np.cos(a), self.apex - 1.2 * r * np.sin(a))
        vertex = medial[-1] + 0.45 * (lat[-1] - medial[-1])
        xd = np.linspace(lat[-1], medial[-1], 18)
        base = _xy(xd, dome + (cp - dome) * ((xd - vertex) / (lat[-1] - vertex)) ** 2)
        ys = self.apex + t * (cp - self.apex)
        inner = _xy(medial, np.minimum(ys, base[-1, 1]))[::-1]
        return _mirror(np.vstack([cap, _xy(lat, ys)[1:], base[1:], inner[1:]]), side)

    def diaphragm(self) -> np.ndarray:
        """Abdomen below both domes, reaching past the image edges."""
        right, left = self.lung(-1), self.lung(1)
        r_base = right[np.argmax(right[:, 1]):][:18]
        l_base = left[np.argmax(left[:, 1]):][:18][::-1]
        w = self.half + 0.3
        return np.vstack([[[-w, r_base[0, 1]]], r_base, l_base,
                          [[w, l_base[-1, 1]], [w, 1.3], [-w, 1.3]]])


def _heart(a: Anatomy, g: _Thorax, width: float) -> np.ndarray:
    """Cardiac silhouette about ``width`` wide, 35 % right / 65 % left of the midline: an ellipse
    whose long axis runs down to the apex on the left dome, the base merging with the mediastinum."""
    tilt = math.radians(a.heart_tilt)
    long_axis, short_axis = 0.5 * width / math.cos(tilt) * 0.92, a.heart_height * math.sqrt(width / 0.3)
    xc = 0.65 * width - width / 2
    u, v = long_axis * _CIRCLE.real, short_axis * _CIRCLE.imag * np.where(_CIRCLE.imag > 0, 0.8, 1.0)
    y = u * math.sin(tilt) + v * math.cos(tilt)
    return _xy(xc + u * math.cos(tilt) - v * math.sin(tilt), y + g.dome[1] + 0.08 - y.max())


def _bones(c: _Canvas, a: Anatomy, acq: Acquisition, g: _Thorax) -> np.ndarray:
    """Ribs, clavicles, spine, humeral heads, scapulae and costal calcification (additive)."""
    bd, layer, s = a.bone_density, c.blank(), np.linspace(0, 1, 16)
    k = np.arange(10)[:, None]
    y0 = g.apex + 0.004 + k * (g.cp[1] - g.apex) / 9.5
    xe = g.lateral(y0 + 0.04) + 0.02
    rib_x = 0.03 + s * (xe - 0.03)
    rib_y = y0 - 0.022 * np.sin(np.pi * s) + (0.045 + 0.003 * k) * s ** 2
    front_x, front_y = xe - 0.015 - s * 0.55 * xe, rib_y[:, -1:] + 0.02 + 0.09 * s
    post, ant = _xy(rib_x, rib_y), _xy(front_x, front_y)[:7]
    calc = _xy(front_x[:7, -1:] - s[:6] * 0.1 * xe[:7], front_y[:7, -1:] + s[:6] * 0.02)
    both = lambda lines: list(np.concatenate([lines * (-1, 1), lines]))  # noqa: E731
    c.stroke(both(post), 0.018, 0.1 * bd, layer)
    c.stroke(both(ant), 0.013, 0.05 * bd, layer)
    if a.calcification > 0:
        c.stroke(both(calc), 0.011, 0.22 * a.calcification, layer)
    lift, slope = (0.045, 0.02) if acq.view == "AP" else (0.0, 0.06)
    clav_y = g.apex + 0.09 - lift - slope * s + 0.012 * np.sin(2 * np.pi * s)
    clav = _xy(0.035 + s * g.half * 0.95, clav_y)
    c.stroke(both(clav[None]), 0.022, 0.2 * bd, layer)
    c.fill(_xy([-0.032, 0.032, 0.032, -0.032], [-0.1, -0.1, 1.2, 1.2]), value=0.04 * bd, layer=layer)
    ys = np.arange(-0.1, 1.1, 0.052)[:, None]
    bodies = _xy(np.array([-0.03, 0.03, 0.03, -0.03]), ys + np.array([0, 0, 0.04, 0.04]))
    c.fill(*bodies, value=0.05 * bd, layer=layer)
    pedicles = _ellipse(np.array([-0.022, 0.022])[:, None, None], ys[None] + 0.012, 0.007, 0.009)
    c.fill(*pedicles.reshape(-1, len(_CIRCLE), 2), value=0.1 * bd, layer=layer)
    shoulder = g.half + a.soft_tissue + 0.06
    scap_x = g.half - 0.06 if acq.view == "AP" else g.half + 0.02
    scapula = _xy([scap_x, scap_x + 0.09, scap_x + 0.03], [g.apex + 0.03, g.apex, g.apex + 0.27])
    heads = _ellipse(shoulder, g.apex - 0.04, 0.055, 0.06)
    layer += c.fill(heads, _mirror(heads, -1), value=0.18 * bd)
    layer += c.fill(scapula, _mirror(scapula, -1), value=0.05 * bd)
    return layer


def _vessels(c: _Canvas, g: _Thorax, rng: np.random.Generator) -> np.ndarray:
    """Branching pulmonary vessels fanning out of both hila, plus the hilar shadows."""
    layer, thick, thin = c.blank(), [], []
    hilum = np.array([g.med + 0.04, g.apex + 0.23])
    for side in (-1, 1):
        turns = np.cumsum(rng.normal(0, 0.3, (16, 6)), axis=1) + rng.uniform(-1.2, 1.4, (16, 1))
        steps = rng.uniform(0.025, 0.045, (16, 6, 1))
        pts = hilum + np.cumsum(np.stack([np.cos(turns), np.sin(turns)], -1) * steps, 1)
        pts = np.concatenate([np.broadcast_to(hilum, (16, 1, 2)), pts], axis=1) * (side, 1)
        thick += list(pts[:, :3])
        thin += list(pts[:, 2:])
    hila = _ellipse(hilum[0], hilum[1], 0.03, 0.05)
    c.fill(hila, _mirror(hila, -1), value=0.1, layer=layer)
    c.stroke(thick, 0.008, 0.08, layer)
    c.stroke(thin, 0.004, 0.06, layer)
    return layer


@lru_cache(maxsize=32)
def _text_size(text: str, scale: float, thick: int) -> tuple[int, int]:
    return cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0]


def _annotate(image: np.ndarray, acq: Acquisition) -> None:
    """Burn the side marker and label box into the uint8 film (white, like lead letters)."""
    n = image.shape[0]
    left, top = acq.marker_corner % 2 == 0, acq.marker_corner < 2
    if acq.marker:
        scale, thick = n / 256 * 1.1, max(1, round(n / 120))
        w, h = _text_size(acq.marker, scale, thick)
        x = round(0.06 * n) if left else n - w - round(0.06 * n)
        y = round(0.06 * n) + h if top else n - round(0.06 * n)
        cv2.putText(image, acq.marker, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
    if acq.label_box:
        x0, y0 = (n - round(0.3 * n), round(0.02 * n)) if left else (round(0.02 * n), round(0.02 * n))
        x1, y1 = x0 + round(0.27 * n), y0 + round(0.09 * n)
        cv2.rectangle(image, (x0, y0), (x1, y1), 235, -1)
        for row in range(3):
            yy = y0 + round((0.022 + 0.025 * row) * n)
            cv2.line(image, (x0 + 3, yy), (x1 - round((0.04 + 0.05 * row) * n), yy), 75,
                     max(1, n // 200))


def _fit_heart(c: _Canvas, a: Anatomy, g: _Thorax, target_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the heart so that its widest row is exactly ``target_px`` pixels (when reachable)."""
    width = target_px / c.px_per_unit
    for _ in range(6):
        outline = _heart(a, g, width)
        heart = c.fill(outline) > 0
        drawn = widest_row_width(heart)
        if drawn == target_px or drawn == 0:
            break
        width += (target_px - drawn) / c.px_per_unit
    return heart, outline


def render_phantom(anatomy: Anatomy, acq: Acquisition, size: int = 256) -> Phantom:
    """Draw the film and its masks; the heart is fitted to ``heart_ctr × heart_magnification``."""
    if size < 32:
        raise ValueError(f"native_size {size} is too small for a phantom; use >= 32 pixels")
    rng = np.random.default_rng(acq.seed)
    c, g, a = _Canvas(size, acq), _Thorax(anatomy, acq), anatomy
    lungs = c.fill(g.lung(-1), g.lung(1)) > 0
    target_px = max(1, round(a.heart_ctr * acq.heart_magnification * widest_row_width(lungs)))
    heart, outline = _fit_heart(c, a, g, target_px)
    knob_c = (g.med + 0.4 * a.aortic_size, outline[:, 1].min() - 0.02)
    knob = _ellipse(*knob_c, a.aortic_size, 1.1 * a.aortic_size)
    in_heart_columns = heart.any(axis=0)
    bottom = np.where(in_heart_columns, size - 1 - heart[::-1].argmax(axis=0), size)
    under_heart = np.arange(size)[:, None] > bottom[None, :]  # heart rests on the diaphragm
    lungs &= ~heart & ~under_heart & ~(c.fill(knob) > 0)

    body_half = g.half + a.soft_tissue
    body = _xy([0.09, 0.1, 0.2, 0.38, 0.5, 0.6, 0.6, body_half + 0.03, body_half + 0.01,
                body_half - 0.015],
               [-0.1, 0.02, 0.06, 0.075, 0.1, 0.16, 0.34, g.apex + 0.33, g.cp[1], 1.3])
    body_layer = c.fill(np.vstack([_mirror(body[::-1], -1), body]))
    inverse = np.linalg.inv(c.linear).astype(np.float32)
    cols = (np.arange(size, dtype=np.float32) + 0.5 - np.float32(c.origin[0]))[None, :]
    rows = (np.arange(size, dtype=np.float32) + 0.5 - np.float32(c.origin[1]))[:, None]
    px = cols * inverse[0, 0] + rows * inverse[1, 0]  # patient coordinates of every pixel
    py = cols * inverse[0, 1] + rows * inverse[1, 1] + np.float32(0.5)
    profile = np.sqrt(np.clip(1 - (px / (body_half + 0.06)) ** 2, 0.1, 1))
    depth = np.clip((py - g.apex) / (g.cp[1] - g.apex), 0, 1)
    upper = np.clip((py - g.apex + 0.05) / 0.3, 0, 1)
    mediastinum = _xy([-0.09, 0.09, g.med * 0.8, g.med * 1.25, -g.med * 1.25, -g.med * 0.8],
                      [-0.1, -0.1, g.apex, g.dome[1] + 0.05, g.dome[-1] + 0.05, g.apex])
    density = c.fill(mediastinum, knob) * (0.45 + 0.27 * upper)
    density[heart | under_heart] = _MEDIASTINUM
    np.maximum(density, body_layer * (0.45 + 0.55 * profile) * _TISSUE, out=density)
    abdomen = c.fill(g.diaphragm()) * body_layer * (0.7 + 0.3 * profile) * _ABDOMEN
    np.maximum(density, abdomen, out=density)
    lung_f = lungs.astype(np.float32)
    density -= lung_f * (0.85 + 0.3 * depth) * _AIR
    if rng.random() < 0.7:  # gastric bubble under the left dome
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
    coarse = rng.standard_normal((size // 8 + 2, size // 8 + 2)).astype(np.float32)
    density += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * 0.015 * body_layer
    density = cv2.GaussianBlur(density, (0, 0), max(acq.blur * size / 256, 0.3))

    k = 2.2 * acq.contrast  # film characteristic curve: toe and shoulder
    image = (1 - np.exp(-k * np.clip(density, 0, None))) / (1 - math.exp(-k))
    image = np.clip(image + acq.exposure, 0, 1) ** acq.gamma
    image = image + rng.standard_normal(image.shape, np.float32) * np.float32(acq.noise)
    image_u8 = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    _annotate(image_u8, acq)
    heart_u8, lungs_u8 = heart.astype(np.uint8) * 255, lungs.astype(np.uint8) * 255
    return Phantom(image_u8, heart_u8, lungs_u8, measure_ctr(heart_u8, lungs_u8))
