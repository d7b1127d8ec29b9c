"""The embedded default dataset: procedural, FERG-like cartoon faces in cluttered frames.

Every image is drawn from scratch with OpenCV primitives, so the whole pipeline (detect,
crop, train, evaluate) runs offline without any licensed data. The layout mimics CK+:
each (identity, expression, repetition) is a short sequence from the neutral face (frame 1)
to the apex (last frame), and every frame carries the sequence's label.

Faces are stylised but keep the luminance structure of a real face (shaded eye sockets,
dark brows and irises, a lit nose bridge, a darker mouth, shadowed jaw), because the face
stage finds them with OpenCV's Haar cascade inside a larger, cluttered frame.

Geometry is written in *face units*: the origin is the centre of the head ellipse, y points
down and the head's half-height is 1 (crown at y=-1, chin at y=+1).

Determinism: every random number comes from a `numpy.random.default_rng` seeded with
(seed, identity) or (seed, identity, expression, repetition[, frame]), never from global
state, so an image does not depend on the order in which images are generated.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

#: The six basic expressions; each sequence carries exactly one of them.
EXPRESSIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")

#: Hair styles cycled per gender, so every small set of identities mixes them.
HAIR_STYLES = {"f": ("long", "fringe", "bun", "side_part", "short", "long"),
               "m": ("short", "bald", "side_part", "fringe", "short", "long")}

#: Skin tones (BGR), light to dark; identities cycle through them with jitter.
SKIN_TONES = ((196, 212, 240), (150, 180, 225), (120, 160, 210), (95, 130, 185),
              (70, 100, 150), (175, 200, 235))

#: Hair colours (BGR): black, dark brown, brown, auburn, blond, grey.
HAIR_COLOURS = ((30, 30, 35), (30, 45, 70), (45, 70, 110), (40, 60, 140), (90, 160, 205),
                (150, 150, 155))

_SHIFT = 4  # fractional bits for cv2 drawing: sub-pixel precision at small face sizes
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA

#: The face-detector box in face units: centre y and side, calibrated against OpenCV's
#: Haar frontal-face cascade on these faces (benchmarks/synthetic_detection.py).
GT_BOX_CENTRE_Y = 0.16
GT_BOX_SIDE = 1.90


@dataclass(frozen=True)
class ActionUnits:
    """FACS-like action-unit intensities in [0, 1] that deform the neutral face."""

    au1: float = 0.0   # inner brow raiser
    au2: float = 0.0   # outer brow raiser
    au4: float = 0.0   # brow lowerer (down and together)
    au5: float = 0.0   # upper lid raiser (eyes wide)
    au6: float = 0.0   # cheek raiser (lower lid up, eye narrowing)
    au7: float = 0.0   # lid tightener
    au9: float = 0.0   # nose wrinkler
    au10: float = 0.0  # upper lip raiser
    au12: float = 0.0  # lip corner puller (corners up)
    au15: float = 0.0  # lip corner depressor (corners down)
    au20: float = 0.0  # lip stretcher (horizontal)
    au23: float = 0.0  # lip tightener / presser
    au25: float = 0.0  # lips part
    au26: float = 0.0  # jaw drop
    au27: float = 0.0  # mouth stretch (round, wide open)

    def scaled(self, gains: "ActionUnits", intensity: float) -> "ActionUnits":
        """Per-AU gain times a global intensity, clipped to [0, 1]."""
        return ActionUnits(**{f.name: float(np.clip(getattr(self, f.name) * getattr(gains, f.name)
                                                     * intensity, 0.0, 1.0))
                              for f in fields(self)})


#: FACS prototypes of the six basic expressions (Ekman & Friesen, as used for CK+ labels).
PROTOTYPES = {
    "anger": ActionUnits(au4=1.0, au5=0.45, au7=0.9, au23=1.0),
    "disgust": ActionUnits(au4=0.3, au9=1.0, au10=1.0, au15=0.7, au25=0.25),
    "fear": ActionUnits(au1=1.0, au2=0.8, au4=0.7, au5=1.0, au20=1.0, au25=1.0, au26=0.25),
    "happiness": ActionUnits(au6=1.0, au12=1.0, au25=0.8),
    "sadness": ActionUnits(au1=1.0, au4=0.8, au15=1.0, au23=0.2),
    "surprise": ActionUnits(au1=1.0, au2=1.0, au5=1.0, au26=1.0, au27=0.6),
}


@dataclass(frozen=True)
class Identity:
    """One character: face geometry, colours, hair, gender and expressive idiosyncrasy."""

    name: str
    gender: str             # "f" / "m"
    face_width: float       # head half-width / half-height
    jaw: float              # superellipse exponent of the lower face: 2 round .. 3 square
    chin_taper: float       # how much the jaw narrows towards the chin
    eye_y: float
    eye_spacing: float      # eye centre |x| as a fraction of face_width
    eye_size: float         # eye half-width
    eye_height: float       # neutral eye half-opening
    nose_length: float
    nose_width: float
    mouth_y: float
    mouth_width: float      # mouth half-width
    lip_thickness: float
    rest_curve: float       # resting mouth-corner height (+ smiley, - grumpy)
    brow_thickness: float
    brow_height: float      # brow distance above the eye
    skin: tuple
    hair: tuple
    lips: tuple
    iris: tuple
    hair_style: str
    gains: ActionUnits      # how strongly this character moves each action unit


@dataclass(frozen=True)
class Pose:
    """Where and how the face sits in one frame."""

    centre: tuple           # head centre in image pixels
    scale: float            # pixels per face unit (head half-height)
    roll: float             # in-plane rotation, degrees
    yaw: float              # -1..1: squash and feature shift towards one side
    gaze: tuple             # iris offset as a fraction of the eye size
    light: float            # side light on the face, -1..1


# --- identities and sequences -------------------------------------------------------------


def _rng(seed: int, *keys) -> np.random.Generator:
    """A generator keyed by stable hashes of `keys`, so it never depends on call order."""
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(words)


def make_identity(index: int, seed: int = 0) -> Identity:
    """Identity `index`: cycles genders, hair styles and skin tones, jitters the rest."""
    rng = _rng(seed, "identity", index)
    gender = "fm"[index % 2]
    styles = HAIR_STYLES[gender]
    style = styles[(index // 2) % len(styles)]
    tone = np.array(SKIN_TONES[(index * 7 + 3) % len(SKIN_TONES)], float)
    skin = tuple(np.clip(tone + rng.normal(0, 8, 3), 40, 250))
    hair = HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]
    lips = tuple(np.clip(np.array(skin) * [0.62, 0.6, 0.92] - (12 if gender == "f" else 0),
                         20, 255))
    iris = ((30, 50, 70), (70, 60, 40), (40, 70, 50), (25, 30, 45))[int(rng.integers(4))]
    gains = ActionUnits(**{f.name: float(rng.uniform(0.55, 1.25)) for f in fields(ActionUnits)})
    female = gender == "f"
    return Identity(
        name=f"id{index:02d}", gender=gender,
        face_width=rng.uniform(0.70, 0.78) if female else rng.uniform(0.74, 0.84),
        jaw=rng.uniform(2.0, 2.4) if female else rng.uniform(2.3, 3.0),
        chin_taper=rng.uniform(0.15, 0.35), eye_y=rng.uniform(-0.06, 0.02),
        eye_spacing=rng.uniform(0.40, 0.47), eye_size=rng.uniform(0.14, 0.17),
        eye_height=rng.uniform(0.065, 0.085), nose_length=rng.uniform(0.30, 0.40),
        nose_width=rng.uniform(0.09, 0.13), mouth_y=rng.uniform(0.55, 0.62),
        mouth_width=rng.uniform(0.20, 0.26), lip_thickness=rng.uniform(0.035, 0.055),
        rest_curve=rng.uniform(-0.02, 0.02),
        brow_thickness=rng.uniform(0.025, 0.040) if female else rng.uniform(0.038, 0.060),
        brow_height=rng.uniform(0.14, 0.19), skin=skin, hair=hair, lips=lips, iris=iris,
        hair_style=style, gains=gains)


def ease(x: float) -> float:
    """Smoothstep: expressions start and reach their apex gently, like CK+ onsets."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def sequence_units(identity: Identity, expression: str, rng: np.random.Generator) -> ActionUnits:
    """Apex AUs of one repetition: prototype x identity gains x intensity, plus AU jitter.

    The jitter and a little leakage of unrelated AUs make classes overlap, so a model has
    to learn the combination, not one tell-tale feature.
    """
    apex = PROTOTYPES[expression].scaled(identity.gains, rng.uniform(0.75, 1.05))
    noisy = {f.name: float(np.clip(getattr(apex, f.name) + rng.normal(0, 0.08)
                                   + rng.uniform(0, 0.15) * (rng.random() < 0.2), 0, 1))
             for f in fields(ActionUnits)}
    return ActionUnits(**noisy)


def blend(apex: ActionUnits, t: float) -> ActionUnits:
    """The AUs at intensity `t` on the way from neutral (0) to apex (1)."""
    return ActionUnits(**{f.name: getattr(apex, f.name) * t for f in fields(ActionUnits)})


# --- drawing helpers ----------------------------------------------------------------------


class _Canvas:
    """Maps face units to fixed-point canvas pixels; interior features get a yaw shift."""

    def __init__(self, scale: float, origin: tuple, shift_x: float):
        self.scale, self.origin, self.shift_x = scale, origin, shift_x

    def pts(self, xy, shift: float | None = None) -> np.ndarray:
        """Face-unit points (N, 2) -> int32 fixed-point pixel points; `shift` = yaw offset."""
        dx = self.shift_x if shift is None else shift
        k = self.scale * _ONE
        offset = ((self.origin[0] + dx * self.scale) * _ONE, self.origin[1] * _ONE)
        return np.rint(np.asarray(xy, float) * k + offset).astype(np.int32)

    def project(self, xy, shift: float) -> np.ndarray:
        """Face-unit points (N, 2) -> float canvas pixels, for landmarks (no fixed point)."""
        xy = np.asarray(xy, float)
        return np.stack([(xy[:, 0] + shift) * self.scale + self.origin[0],
                         xy[:, 1] * self.scale + self.origin[1]], 1)

    def pt(self, x: float, y: float, shift: float | None = None) -> tuple:
        dx = self.shift_x if shift is None else shift
        return (int(round(((x + dx) * self.scale + self.origin[0]) * _ONE)),
                int(round((y * self.scale + self.origin[1]) * _ONE)))

    def px(self, length: float) -> int:
        """A length in face units as fixed-point pixels (for radii and axes)."""
        return max(1, int(round(length * self.scale * _ONE)))

    def thick(self, length: float) -> int:
        """A line thickness in whole pixels (cv2 thickness takes no fractional bits)."""
        return max(1, int(round(length * self.scale)))


@lru_cache(maxsize=None)
def _bezier_basis(n: int) -> np.ndarray:
    """(n, 3) Bernstein weights of a quadratic curve, shared by every curve of n points."""
    t = np.linspace(0.0, 1.0, n)
    return np.stack([(1 - t) ** 2, 2 * (1 - t) * t, t ** 2], 1)


def _bezier(p0, p1, p2, n: int = 12) -> np.ndarray:
    """Quadratic curve from p0 to p2 that passes through p1 at its middle."""
    ctrl = (2.0 * p1[0] - 0.5 * (p0[0] + p2[0]), 2.0 * p1[1] - 0.5 * (p0[1] + p2[1]))
    return _bezier_basis(n) @ np.array([p0, ctrl, p2], float)


def _shade(colour, factor: float) -> tuple:
    return tuple(min(255.0, max(0.0, float(c) * factor)) for c in colour)


def _mix(a, b, t: float) -> tuple:
    """Colour between a (t=0) and b (t=1): lets wrinkles fade in with AU intensity."""
    return tuple(float(x + (y - x) * t) for x, y in zip(a, b))


def _fill(img, canvas: _Canvas, xy, colour, shift=None) -> None:
    cv2.fillPoly(img, [canvas.pts(xy, shift)], colour, _AA, _SHIFT)


def _line(img, canvas: _Canvas, xy, colour, width: float, shift=None) -> None:
    cv2.polylines(img, [canvas.pts(xy, shift)], False, colour, canvas.thick(width), _AA, _SHIFT)


def _ellipse(img, canvas: _Canvas, centre, axes, colour, angle=0.0, shift=None,
             thickness=-1) -> None:
    cv2.ellipse(img, canvas.pt(*centre, shift=shift), (canvas.px(axes[0]), canvas.px(axes[1])),
                angle, 0, 360, colour, thickness, _AA, _SHIFT)


# --- the face -----------------------------------------------------------------------------


def head_outline(identity: Identity, jaw_drop: float, n: int = 72) -> np.ndarray:
    """Head contour: elliptic cranium, superellipse jaw that tapers to the chin and drops."""
    return _contour(identity, jaw_drop, np.linspace(0, 2 * np.pi, n, endpoint=False))


def _contour(identity: Identity, jaw_drop: float, theta: np.ndarray) -> np.ndarray:
    """Points of the head contour at angles `theta` (0 = right, pi/2 = chin)."""
    c, s = np.cos(theta), np.sin(theta)
    lower = s > 0
    expo = np.where(lower, 2.0 / identity.jaw, 1.0)
    x = identity.face_width * np.sign(c) * np.abs(c) ** expo
    y = np.sign(s) * np.abs(s) ** expo
    y = np.where(lower, y * (1.0 + 0.12 * jaw_drop), y)
    x = x * (1.0 - identity.chin_taper * np.clip(y, 0, None) ** 3)
    return np.stack([x, y], 1)


def _draw_back_hair(img, mask, canvas: _Canvas, ident: Identity) -> None:
    """Hair behind the head: long hair framing the face, a bun on top."""
    w = ident.face_width
    if ident.hair_style == "long":
        shape = np.concatenate([
            _bezier((-w * 1.18, 1.15), (-w * 1.22, -0.2), (-w * 0.6, -1.1)),
            _bezier((w * 0.6, -1.1), (w * 1.22, -0.2), (w * 1.18, 1.15))])
        shape = np.vstack([shape, [(w * 0.75, 1.18), (-w * 0.75, 1.18)]])
        for target, colour in ((img, _shade(ident.hair, 0.8)), (mask, 255)):
            _fill(target, canvas, shape, colour, shift=0.0)
            _ellipse(target, canvas, (0, -0.35), (w * 1.1, 0.78), colour, shift=0.0)
    elif ident.hair_style == "bun":
        for target, colour in ((img, ident.hair), (mask, 255)):
            _ellipse(target, canvas, (0, -1.08), (0.32, 0.24), colour, shift=0.0)


def _draw_head(img, mask, canvas: _Canvas, ident: Identity, au: ActionUnits) -> np.ndarray:
    """Neck, ears and the skin-coloured head; returns the head outline used for shading."""
    w = ident.face_width
    neck = [(-w * 0.5, 0.5), (w * 0.5, 0.5), (w * 0.58, 1.5), (-w * 0.58, 1.5)]
    outline = head_outline(ident, au.au26 + 0.6 * au.au27)
    layers = ((img, _shade(ident.skin, 0.78), _shade(ident.skin, 0.85), ident.skin),
              (mask, 255, 255, 255))
    for target, neck_colour, ear_colour, skin in layers:
        _fill(target, canvas, neck, neck_colour, shift=0.0)
        for side in (-1, 1):
            _ellipse(target, canvas, (side * w * 0.98, 0.05), (0.09, 0.17), ear_colour,
                     shift=0.0)
        _fill(target, canvas, outline, skin, shift=0.0)
    return outline


def _draw_front_hair(img, mask, canvas: _Canvas, ident: Identity) -> None:
    """Hair over the forehead: the hairline shape differs per style."""
    w = ident.face_width
    style = ident.hair_style
    if style == "bald":
        _ellipse(img, canvas, (-0.2 * w, -0.78), (0.16, 0.07), _shade(ident.skin, 1.12),
                 angle=-15, shift=0.0)
        return
    theta = np.linspace(np.pi, 2 * np.pi, 25)
    cap = np.stack([1.07 * w * np.cos(theta), -0.05 + 1.1 * np.sin(theta)], 1)
    if style == "fringe":
        xs = np.linspace(w * 0.9, -w * 0.9, 11)
        ys = -0.42 + 0.05 * (np.arange(11) % 2) + 0.1 * (np.abs(xs) / w) ** 2
        line = np.stack([xs, ys], 1)
    elif style == "side_part":
        line = np.vstack([_bezier((w * 0.92, -0.25), (w * 0.15, -0.5), (-w * 0.45, -0.78), 10),
                          _bezier((-w * 0.45, -0.78), (-w * 0.8, -0.62), (-w * 0.92, -0.28), 6)])
    else:  # short, long, bun: a rounded hairline with temples
        line = np.vstack([_bezier((w * 0.92, -0.28), (w * 0.75, -0.58), (w * 0.3, -0.66), 8),
                          _bezier((w * 0.3, -0.66), (0, -0.62), (-w * 0.3, -0.66), 6),
                          _bezier((-w * 0.3, -0.66), (-w * 0.75, -0.58), (-w * 0.92, -0.28), 8)])
    shape = np.vstack([cap, line])  # the hairline ends inside the head: no gap at temples
    _fill(img, canvas, shape, ident.hair, shift=0.0)
    _fill(mask, canvas, shape, 255, shift=0.0)
    strand = _shade(ident.hair, 1.35)
    for k in (-0.5, 0.0, 0.45):
        _line(img, canvas, _bezier((k * w, -0.95), (k * w * 1.2 + 0.05, -0.8),
                                   (k * w * 1.3, -0.62)), strand, 0.012, shift=0.0)


def _eye_geometry(ident: Identity, au: ActionUnits, side: int):
    """Centre, half-width, upper and lower lid openings of one eye."""
    ex = side * ident.eye_spacing * ident.face_width
    ey = ident.eye_y - 0.02 * au.au6
    h = ident.eye_height
    upper = h * (1.0 + 0.75 * au.au5 - 0.45 * au.au7 - 0.35 * au.au6 - 0.2 * au.au9)
    lower = h * (0.75 + 0.15 * au.au5 - 0.45 * au.au6 - 0.35 * au.au7 - 0.15 * au.au9)
    return ex, ey, ident.eye_size, max(upper, 0.012), max(lower, 0.008)


def _eyelids(ident: Identity, au: ActionUnits, side: int, n: int = 12):
    """Upper lid (inner to outer corner) and lower lid (outer to inner) as n-point curves."""
    ex, ey, ew, up, lo = _eye_geometry(ident, au, side)
    inner, outer = _eye_corners(ex, ey, ew, side)
    upper = _bezier(inner, (_lid_peak_x(ex, ew, side), ey - up), outer, n)
    lower = _bezier(outer, (ex + side * ew * 0.1, ey + lo), inner, n)
    return upper, lower


def _eye_corners(ex: float, ey: float, ew: float, side: int) -> tuple:
    return (ex - side * ew, ey + 0.01), (ex + side * ew, ey - 0.005)


def _lid_peak_x(ex: float, ew: float, side: int) -> float:
    return ex - side * ew * 0.15


def _draw_eye(img, canvas: _Canvas, ident: Identity, au: ActionUnits, side: int,
              gaze: tuple) -> None:
    """Sclera, iris and pupil clipped by lids, dark upper lid line, crease and cheek lines."""
    ex, ey, ew, up, lo = _eye_geometry(ident, au, side)
    inner, outer = _eye_corners(ex, ey, ew, side)
    peak_x = _lid_peak_x(ex, ew, side)
    upper, lower = _eyelids(ident, au, side)
    skin = ident.skin
    _fill(img, canvas, np.vstack([upper, lower]), (225, 232, 238))
    r = ident.eye_height * 1.1
    ix, iy = ex + gaze[0] * ew, ey + gaze[1] * ident.eye_height + 0.1 * r
    _ellipse(img, canvas, (ix, iy), (r, r), ident.iris)
    _ellipse(img, canvas, (ix, iy), (r * 0.5, r * 0.5), (12, 12, 15))
    _ellipse(img, canvas, (ix - 0.3 * r, iy - 0.35 * r), (r * 0.2, r * 0.2), (240, 240, 240))
    top = min(ey - up - 0.035, iy - r - 0.01)
    bottom = max(ey + lo + 0.02, iy + r + 0.01)
    wide_in, wide_out = (inner[0] - side * 0.015, inner[1]), (outer[0] + side * 0.015, outer[1])
    lid = np.vstack([_bezier(wide_in, (peak_x, top), wide_out), upper[::-1]])
    _fill(img, canvas, lid, _shade(skin, 0.86))
    _fill(img, canvas, np.vstack([_bezier(wide_out, (ex, bottom), wide_in), lower[::-1]]), skin)
    _line(img, canvas, upper, (25, 22, 28), 0.028 if ident.gender == "f" else 0.02)
    _line(img, canvas, lower, _shade(skin, 0.6), 0.01)
    crease = _bezier((inner[0], inner[1] - 0.02), (peak_x, ey - up - 0.04), outer)
    _line(img, canvas, crease, _shade(skin, 0.7), 0.01)
    if au.au6 > 0.05:  # crow's feet and the raised cheek under the eye
        fold = _mix(skin, _shade(skin, 0.6), min(1.0, au.au6))
        for k in (-1, 0, 1):
            _line(img, canvas, [(outer[0] + side * 0.03, ey + 0.025 * k),
                                (outer[0] + side * 0.08, ey + 0.045 * k)], fold, 0.009)
        _line(img, canvas, _bezier((ex - side * ew * 0.8, ey + lo + 0.05), (ex, ey + lo + 0.08),
                                   (ex + side * ew * 0.9, ey + lo + 0.04)), fold, 0.01)


def _brow_centreline(ident: Identity, au: ActionUnits, side: int, n: int = 10) -> np.ndarray:
    """Inner, middle and outer brow points after AU1 (inner up), AU2 (outer up), AU4 (down, in)."""
    w = ident.face_width
    base = ident.eye_y - ident.eye_height - ident.brow_height + 0.03
    inner_x = side * (w * ident.eye_spacing - ident.eye_size * 0.95 - 0.05 * au.au4)
    outer_x = side * (w * ident.eye_spacing + ident.eye_size * 1.15)
    lower = 0.07 * au.au4 + 0.03 * au.au9
    inner_y = base + 0.015 - 0.11 * au.au1 - 0.03 * au.au2 + lower + 0.02 * au.au4
    mid_y = base - 0.035 - 0.04 * au.au1 - 0.09 * au.au2 + lower
    outer_y = base + 0.01 - 0.02 * au.au1 - 0.1 * au.au2 + 0.5 * lower
    mid_x = 0.45 * inner_x + 0.55 * outer_x
    return _bezier((inner_x, inner_y), (mid_x, mid_y), (outer_x, outer_y), n)


def _draw_brows(img, canvas: _Canvas, ident: Identity, au: ActionUnits) -> None:
    """Tapered brows in hair colour, plus furrow (AU4) and forehead (AU1/2) wrinkles."""
    colour = _shade(ident.hair, 0.7) if ident.hair_style != "bald" else (40, 45, 55)
    wrinkle = _shade(ident.skin, 0.65)
    for side in (-1, 1):
        line = _brow_centreline(ident, au, side)
        half = ident.brow_thickness * np.linspace(0.6, 0.2, len(line))[:, None]
        _fill(img, canvas, np.vstack([line - [0, 1] * half, (line + [0, 1] * half)[::-1]]),
              colour)
    if au.au4 > 0.05:
        tone = _mix(ident.skin, wrinkle, min(1.0, au.au4))
        for side in (-1, 1):
            x = side * 0.035
            y = ident.eye_y - ident.eye_height - 0.08
            _line(img, canvas, [(x, y - 0.07), (x * 1.3, y + 0.01)], tone, 0.01)
    raise_ = max(au.au1, au.au2)
    if raise_ > 0.1:
        tone = _mix(ident.skin, wrinkle, min(1.0, raise_ - 0.1))
        for k in range(3):
            y = ident.eye_y - 0.36 - 0.05 * k
            _line(img, canvas, _bezier((-0.25, y), (0, y - 0.02), (0.25, y)), tone, 0.008)


def _nose_geometry(ident: Identity, au: ActionUnits) -> tuple:
    """Height of the nose tip and the nose's width; AU9/AU10 lift and widen it."""
    tip_y = ident.eye_y + ident.nose_length - 0.02 * au.au9 - 0.01 * au.au10
    return tip_y, ident.nose_width * (1.0 + 0.15 * au.au9 + 0.1 * au.au10)


def _draw_nose(img, canvas: _Canvas, ident: Identity, au: ActionUnits, yaw_shift: float) -> None:
    """Nose wings, tip and nostrils; AU9 adds wrinkles across the bridge and lifts the wings."""
    tip_y, nw = _nose_geometry(ident, au)
    shift = canvas.shift_x + yaw_shift
    skin = ident.skin
    _ellipse(img, canvas, (0, tip_y - 0.01), (nw * 0.45, 0.05), _shade(skin, 1.06), shift=shift)
    for side in (-1, 1):
        _ellipse(img, canvas, (side * nw * 0.35, tip_y + 0.025), (nw * 0.2, 0.018),
                 (40, 35, 50), angle=side * 15, shift=shift)
        wing = _bezier((side * nw * 0.55, tip_y - 0.05), (side * nw * 0.75, tip_y + 0.0),
                       (side * nw * 0.45, tip_y + 0.04))
        _line(img, canvas, wing, _shade(skin, 0.62), 0.014, shift=shift)
    if au.au9 > 0.05:
        tone = _mix(skin, _shade(skin, 0.55), min(1.0, au.au9))
        for k in range(3):
            y = ident.eye_y - 0.03 + 0.04 * k
            _line(img, canvas, _bezier((-0.06, y + 0.01), (0, y - 0.008), (0.06, y + 0.01)),
                  tone, 0.009, shift=shift)


def _mouth_shape(ident: Identity, au: ActionUnits):
    """Mouth half-width, corner height, opening and lip thickness from the lip/jaw AUs."""
    width = ident.mouth_width * (1.0 + 0.3 * au.au20 + 0.18 * au.au12 - 0.12 * au.au23
                                 - 0.25 * au.au27 - 0.1 * au.au26 + 0.05 * au.au10)
    corner = (-ident.rest_curve - 0.085 * au.au12 + 0.075 * au.au15 + 0.015 * au.au20
              - 0.015 * au.au10)
    opening = 0.035 * au.au25 + 0.12 * au.au26 + 0.1 * au.au27 + 0.02 * au.au10 * au.au25
    lip = ident.lip_thickness * (1.0 - 0.65 * au.au23 - 0.2 * au.au20)
    return width, corner, opening, lip


def _mouth_y(ident: Identity, au: ActionUnits) -> float:
    """Height of the mouth centre; the jaw drop (AU26/27) pulls it down."""
    return ident.mouth_y + 0.06 * au.au26 + 0.05 * au.au27


def _lips(ident: Identity, au: ActionUnits, n: int = 16):
    """Outer and inner lip curves: upper ones left to right, lower ones right to left."""
    width, corner, opening, lip = _mouth_shape(ident, au)
    my = _mouth_y(ident, au)
    top_in, bottom_in = my - 0.3 * opening - 0.02 * au.au10, my + 0.7 * opening
    left, right = (-width, my + corner), (width, my + corner)
    up_out = _bezier(left, (0, top_in - lip * 1.1), right, n)
    up_in = _bezier(left, (0, top_in), right, n)
    lo_in = _bezier(right, (0, bottom_in), left, n)
    lo_out = _bezier(right, (0, bottom_in + lip * 1.3), left, n)
    return up_out, up_in, lo_in, lo_out


def _draw_mouth(img, canvas: _Canvas, ident: Identity, au: ActionUnits) -> None:
    """Lips from two pairs of curves through the corners; dark cavity and teeth when open."""
    width, corner, opening, lip = _mouth_shape(ident, au)
    my = _mouth_y(ident, au)
    up_out, up_in, lo_in, lo_out = _lips(ident, au)
    skin = ident.skin
    fold = _mix(skin, _shade(skin, 0.6), min(1.0, max(au.au12, au.au10, 0.25 * au.au20)))
    for side in (-1, 1):  # nasolabial folds deepen with smiling and upper-lip raising
        _line(img, canvas, _bezier((side * ident.nose_width * 0.9, ident.eye_y
                                    + ident.nose_length - 0.03),
                                   (side * (width + 0.04), my - 0.06),
                                   (side * (width + 0.05), my + corner + 0.04)), fold, 0.012)
    _fill(img, canvas, np.vstack([up_out, lo_out]), ident.lips)
    if opening > 0.006:
        cavity = np.vstack([up_in, lo_in])
        _fill(img, canvas, cavity, (35, 25, 45))
        teeth = min(opening * 0.55, 0.035) * min(1.0, 2 * max(au.au12, au.au10))
        if teeth > 0.004:
            band = np.vstack([up_in[2:-2], (up_in[2:-2] + [0, teeth])[::-1]])
            _fill(img, canvas, band, (225, 230, 235))
    seam = _shade(ident.lips, 0.45 - 0.15 * au.au23)
    _line(img, canvas, up_in, seam, 0.012 + 0.008 * au.au23)
    if au.au15 > 0.2 or au.au23 > 0.3:  # chin boss pushed up under a depressed/pressed mouth
        tone = _mix(skin, _shade(skin, 0.7), min(1.0, max(au.au15, au.au23)))
        _line(img, canvas, _bezier((-0.08, my + 0.14), (0, my + 0.12), (0.08, my + 0.14)),
              tone, 0.01)


def _shading(ident: Identity, au: ActionUnits, canvas: _Canvas, outline, light: float,
             shape: tuple) -> np.ndarray:
    """A multiplicative light map giving the face a real face's Haar-visible structure.

    Dark eye sockets under a lit forehead, a lit nose bridge between them, darker sides of
    the nose and under the mouth, and a shadowed jaw edge and neck.
    """
    shade = np.ones(shape, np.float32)
    w = ident.face_width
    for side in (-1, 1):
        ex, ey, ew, up, _ = _eye_geometry(ident, au, side)
        _ellipse(shade, canvas, (ex, ey - 0.03), (ew * 1.25, 0.13 + 0.3 * up), 0.72)
        _ellipse(shade, canvas, (side * 0.075, ey + 0.1), (0.035, 0.2), 0.82)
        _ellipse(shade, canvas, (side * w * 0.7, ident.mouth_y - 0.05), (0.12, 0.25), 0.93)
    _ellipse(shade, canvas, (0, ident.eye_y + 0.05), (0.04, 0.2), 1.12)
    _ellipse(shade, canvas, (0, ident.eye_y - 0.35), (w * 0.7, 0.16), 1.1, shift=0.0)
    _ellipse(shade, canvas, (0, ident.eye_y + ident.nose_length + 0.07), (0.12, 0.035), 0.8)
    _ellipse(shade, canvas, (0, ident.mouth_y + 0.13 + 0.06 * au.au26), (0.12, 0.045), 0.85)
    cv2.polylines(shade, [canvas.pts(outline, 0.0)], True, 0.88, canvas.thick(0.12), _AA, _SHIFT)
    _ellipse(shade, canvas, (0, 1.05), (w * 0.55, 0.12), 0.55, shift=0.0)
    sigma = max(1.0, 0.045 * canvas.scale)
    shade = cv2.GaussianBlur(shade, (0, 0), sigma)
    xs = (np.arange(shape[1], dtype=np.float32) - canvas.origin[0]) / (canvas.scale * w)
    return shade * (1.0 + 0.14 * light * np.clip(xs, -1.2, 1.2))[None, :]


def _face_canvas(ident: Identity, pose: Pose) -> tuple:
    """The face's own canvas at the pose's scale and yaw, and its (width, height)."""
    scale = pose.scale
    half_w, top, bottom = 1.35 * ident.face_width, 1.45, 1.55
    width = int(math.ceil(2 * half_w * scale)) + 4
    height = int(math.ceil((top + bottom) * scale)) + 4
    origin = (width / 2.0, top * scale + 2)
    return _Canvas(scale, origin, 0.07 * pose.yaw * ident.face_width), (width, height)


def render_face(ident: Identity, au: ActionUnits, pose: Pose):
    """Draw one face on its own canvas at the pose's scale.

    Returns (bgr uint8 canvas, float alpha mask, canvas origin in pixels). Rotation and
    placement happen later, in `place_face`.
    """
    canvas, (width, height) = _face_canvas(ident, pose)
    scale, origin, yaw_shift = canvas.scale, canvas.origin, canvas.shift_x
    img = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    _draw_back_hair(img, mask, canvas, ident)
    outline = _draw_head(img, mask, canvas, ident, au)
    _draw_front_hair(img, mask, canvas, ident)
    for side in (-1, 1):
        _draw_eye(img, canvas, ident, au, side, pose.gaze)
    _draw_brows(img, canvas, ident, au)
    _draw_nose(img, canvas, ident, au, 0.5 * yaw_shift)
    _draw_mouth(img, canvas, ident, au)
    shade = _shading(ident, au, canvas, outline, pose.light, mask.shape)
    img = np.clip(img * shade[..., None], 0, 255).astype(np.uint8)
    alpha = mask.astype(np.float32) / 255.0
    fade = int(origin[1] + 1.2 * scale)  # the neck fades out instead of ending in a cut
    alpha[fade:] *= np.linspace(1, 0, height - fade, dtype=np.float32)[:, None]
    return img, alpha, origin


def face_landmarks(ident: Identity, au: ActionUnits, pose: Pose) -> np.ndarray:
    """The drawn face's 68 iBUG 300-W points, (68, 2) image pixels (x, y), pixel centres at
    integers (OpenCV's drawing convention).

    Jaw 0-16 (image left to right around the chin), brows 17-26 (along their centrelines,
    image left to right), nose bridge 27-30 and base 31-35, eyes 36-47 (each from its image-left
    corner, clockwise: upper lid, right corner, lower lid) and mouth 48-67 (outer lip from the
    left corner clockwise, then the inner lip). Each point is taken from the very curve the
    renderer draws, so it is exact up to the drawing's antialiasing.
    """
    canvas, _ = _face_canvas(ident, pose)
    interior, nose_shift = canvas.shift_x, 1.5 * canvas.shift_x  # as render_face shifts them
    jaw = _contour(ident, au.au26 + 0.6 * au.au27, np.linspace(np.pi, 0.0, 17))
    brows = np.vstack([_brow_centreline(ident, au, -1, 5)[::-1],
                       _brow_centreline(ident, au, 1, 5)])
    ey = _eye_geometry(ident, au, 1)[1]
    tip_y, nw = _nose_geometry(ident, au)
    bridge = np.stack([np.zeros(4), np.linspace(ey, tip_y, 4)], 1)
    base = [(-nw * 0.5, tip_y + 0.03), (-nw * 0.35, tip_y + 0.04), (0.0, tip_y + 0.04),
            (nw * 0.35, tip_y + 0.04), (nw * 0.5, tip_y + 0.03)]
    eyes = []
    for side in (-1, 1):
        upper, lower = _eyelids(ident, au, side, 4)  # corners and the lids' thirds
        if side < 0:  # walk both lids from the image-left corner, as for the other eye
            upper, lower = upper[::-1], lower[::-1]
        eyes.append(np.vstack([upper, lower[1:3]]))
    up_out, _, _, lo_out = _lips(ident, au, 7)
    _, up_in, lo_in, _ = _lips(ident, au, 5)
    mouth = np.vstack([up_out, lo_out[1:6], up_in, lo_in[1:4]])
    canvas_points = np.vstack([
        canvas.project(jaw, 0.0), canvas.project(brows, interior),
        canvas.project(np.vstack([bridge, base]), nose_shift),
        canvas.project(np.vstack(eyes + [mouth]), interior)])
    matrix = _affine(pose, canvas.origin)
    return canvas_points @ matrix[:, :2].T + matrix[:, 2]


def landmarks_text(points: np.ndarray) -> str:
    """`x0 y0 x1 y1 ...` with two decimals: the manifest's `landmarks` format."""
    return " ".join(f"{v:.2f}" for v in np.asarray(points, float).ravel())


def _affine(pose: Pose, origin: tuple) -> np.ndarray:
    """Canvas -> image: yaw squash, roll about the head centre, then move to the pose centre."""
    squash = 1.0 - 0.12 * abs(pose.yaw)
    a = math.radians(pose.roll)
    cos, sin = math.cos(a), math.sin(a)
    lin = np.array([[cos, -sin], [sin, cos]]) @ np.diag([squash, 1.0])
    offset = np.asarray(pose.centre) - lin @ np.asarray(origin)
    return np.hstack([lin, offset[:, None]]).astype(np.float64)


def place_face(frame: np.ndarray, face: np.ndarray, alpha: np.ndarray, origin: tuple,
               pose: Pose) -> None:
    """Alpha-composite the rendered face into the float frame, in place, through the pose.

    Only the frame region the warped canvas covers is touched, which keeps this cheap.
    """
    height, width = frame.shape[:2]
    matrix = _affine(pose, origin)
    h, w = face.shape[:2]
    corners = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], float) @ matrix.T
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, [width, height])
    if x1 <= x0 or y1 <= y0:
        return
    matrix[:, 2] -= (x0, y0)
    size = (int(x1 - x0), int(y1 - y0))
    warped = cv2.warpAffine(face, matrix, size, flags=cv2.INTER_LINEAR).astype(np.float32)
    weight = cv2.warpAffine(alpha, matrix, size, flags=cv2.INTER_LINEAR)[..., None]
    roi = frame[y0:y1, x0:x1]
    roi += (warped - roi) * weight


def face_box(ident: Identity, pose: Pose) -> tuple:
    """Ground-truth box "as a frontal face detector draws it": square, brows to chin.

    The box centre follows the roll, its side the head's width and the yaw squash; both are
    calibrated to what OpenCV's Haar cascade returns on these faces.
    """
    squash = 1.0 - 0.12 * abs(pose.yaw)
    a = math.radians(pose.roll)
    dy = GT_BOX_CENTRE_Y * pose.scale
    cx = pose.centre[0] - math.sin(a) * dy
    cy = pose.centre[1] + math.cos(a) * dy
    side = GT_BOX_SIDE * pose.scale * (ident.face_width / 0.77) ** 0.5 * (0.5 + 0.5 * squash)
    return (int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)),
            int(round(side)))


# --- the scene ----------------------------------------------------------------------------


def background(rng: np.random.Generator, size: tuple) -> np.ndarray:
    """Cluttered, non-face background: gradient, low-frequency texture, shapes and lines."""
    width, height = size
    c0, c1 = rng.uniform(30, 230, 3).astype(np.float32), rng.uniform(30, 230, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.arange(width, dtype=np.float32)[None, :] * math.cos(angle)
            + np.arange(height, dtype=np.float32)[:, None] * math.sin(angle))
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    # fine texture only: coarse blotches would pair up into face-like eye/mouth patterns
    texture = rng.normal(0, 9, (height // 6 + 1, width // 6 + 1)).astype(np.float32)
    texture = cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC)
    img = c0 + (c1 - c0) * ramp[..., None] + texture[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(5, 11))):
        _clutter_shape(img, rng, width, height)
    return img


def _clutter_shape(img: np.ndarray, rng: np.random.Generator, width: int, height: int) -> None:
    """One random rectangle, circle, line bundle, polyline or stripe patch."""
    colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
    size = int(rng.integers(24, max(25, min(width, height) // 2)))  # no eye-sized blobs
    kind = int(rng.integers(5))
    if kind == 0:
        cv2.rectangle(img, (x, y), (x + size, y + int(size * rng.uniform(0.3, 1.5))), colour,
                      -1 if rng.random() < 0.6 else 2, _AA)
    elif kind == 1:
        cv2.circle(img, (x, y), size // 2, colour, -1 if rng.random() < 0.5 else 2, _AA)
    elif kind == 2:
        for k in range(int(rng.integers(1, 4))):
            end = (x + int(rng.integers(-width, width)), y + int(rng.integers(-height, height)))
            cv2.line(img, (x, y + 6 * k), end, colour, int(rng.integers(1, 4)), _AA)
    elif kind == 3:
        pts = np.stack([rng.integers(0, width, 5), rng.integers(0, height, 5)], 1)
        cv2.polylines(img, [pts.astype(np.int32)], bool(rng.random() < 0.5), colour,
                      int(rng.integers(1, 3)), _AA)
    else:
        step = int(rng.integers(4, 9))
        for k in range(0, size, step):
            cv2.line(img, (x + k, y), (x + k, y + size), colour, 1, _AA)


def sample_pose(rng: np.random.Generator, ident: Identity, size: tuple) -> Pose:
    """Random roll, yaw, scale and a position that keeps the whole head inside the frame."""
    width, height = size
    scale = 0.5 * height * rng.uniform(0.35, 0.60)
    roll = rng.uniform(-10, 10)
    half_w, top, bottom = ident.face_width * 1.15 + 0.05, 1.12, 1.08
    corners = np.array([[-half_w, -top], [half_w, -top], [half_w, bottom], [-half_w, bottom]])
    a = math.radians(roll)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    ext = corners @ rot.T * scale
    lo, hi = ext.min(0), ext.max(0)
    cx = rng.uniform(-lo[0], max(-lo[0], width - hi[0]))
    cy = rng.uniform(-lo[1], max(-lo[1], height - hi[1]))
    return Pose(centre=(cx, cy), scale=scale, roll=roll, yaw=rng.uniform(-1, 1),
                gaze=(rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2)),
                light=rng.uniform(-1, 1))


#: Margin of the per-sequence noise field; each frame reads it at a random offset.
_GRAIN_MARGIN = 16


def grain(rng: np.random.Generator, size: tuple) -> np.ndarray:
    """Gaussian noise for a whole sequence, slightly larger than the frame.

    Drawing normal deviates is the costliest step per image, so frames read this field at
    random offsets (and signs) instead of drawing fresh noise.
    """
    width, height = size
    return rng.standard_normal((height + _GRAIN_MARGIN, width + _GRAIN_MARGIN, 3),
                               dtype=np.float32)


@dataclass(frozen=True)
class Lighting:
    """Camera and room light of one sequence (constant over it, as in a recording)."""

    angle: float            # direction of the global lighting gradient, radians
    gradient: float         # gain difference across the frame along that direction
    contrast: float
    brightness: float
    noise: float            # sensor noise standard deviation, grey levels


def sample_lighting(rng: np.random.Generator) -> Lighting:
    return Lighting(angle=rng.uniform(0, 2 * np.pi), gradient=rng.uniform(0.0, 0.5),
                    contrast=rng.uniform(0.75, 1.2), brightness=rng.uniform(-25, 25),
                    noise=rng.uniform(2.0, 7.0))


def photometric(frame: np.ndarray, light: Lighting, rng: np.random.Generator,
                noise_field: np.ndarray) -> np.ndarray:
    """Apply the lighting gradient, contrast, brightness and this frame's sensor noise."""
    height, width = frame.shape[:2]
    strength = light.gradient * light.contrast
    gx = (np.arange(width, dtype=np.float32) / width - 0.5) * (math.cos(light.angle) * strength)
    gy = (np.arange(height, dtype=np.float32) / height - 0.5) * (math.sin(light.angle) * strength)
    gain = (light.contrast + gx[None, :] + gy[:, None])[..., None]
    dx, dy = rng.integers(0, _GRAIN_MARGIN, 2)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    out = noise_field[dy:dy + height, dx:dx + width] * (sign * light.noise)
    out += 128.0 * (1.0 - light.contrast) + light.brightness + 0.5
    out += frame * gain
    return np.clip(out, 0, 255).astype(np.uint8)


def _jitter_pose(pose: Pose, rng: np.random.Generator) -> Pose:
    """Tiny per-frame head motion within a sequence, as in a real recording."""
    return replace(pose, centre=(pose.centre[0] + rng.normal(0, 0.6),
                                 pose.centre[1] + rng.normal(0, 0.6)),
                   roll=pose.roll + rng.normal(0, 0.4))


def render_sequence(ident: Identity, expression: str, rep: int, frames: int, size: tuple,
                    seed: int):
    """Yield (frame index, BGR image, gt box, 68 landmarks) for one neutral-to-apex sequence."""
    rng = _rng(seed, ident.name, expression, rep)
    apex = sequence_units(ident, expression, rng)
    pose = sample_pose(rng, ident, size)
    scene = background(rng, size).astype(np.float32)
    noise_field = grain(rng, size)
    light = sample_lighting(rng)
    for f in range(1, frames + 1):
        frame_rng = _rng(seed, ident.name, expression, rep, f)
        t = ease((f - 1) / max(frames - 1, 1))
        frame_pose = _jitter_pose(pose, frame_rng)
        units = blend(apex, t)
        face, alpha, origin = render_face(ident, units, frame_pose)
        composite = scene.copy()
        place_face(composite, face, alpha, origin, frame_pose)
        yield (f, photometric(composite, light, frame_rng, noise_field),
               face_box(ident, frame_pose), face_landmarks(ident, units, frame_pose))


def generate(root: Path, *, identities: int = 12, repetitions: int = 4, frames: int = 6,
             frame_size: tuple[int, int] = (320, 240), seed: int = 0,
             progress: bool = True) -> pd.DataFrame:
    """Write the synthetic dataset under `root` and return its manifest (one row per image).

    Layout: root/<subject>/<subject>_<expression>_r<rep>/<..>_f<frame:02d>.png, with
    frame_size = (width, height). Same arguments -> byte-identical files and manifest.
    The manifest's `landmarks` column holds each face's 68 points (`face_landmarks`).
    """
    root = Path(root)
    size = (int(frame_size[0]), int(frame_size[1]))
    rows = []
    total = identities * len(EXPRESSIONS) * repetitions * frames
    bar = tqdm(total=total, desc="synthetic", unit="img", disable=not progress)
    for index in range(identities):
        ident = make_identity(index, seed)
        for expression in EXPRESSIONS:
            for rep in range(1, repetitions + 1):
                sequence = f"{expression}_r{rep}"
                folder = root / ident.name / f"{ident.name}_{sequence}"
                folder.mkdir(parents=True, exist_ok=True)
                for f, image, box, points in render_sequence(ident, expression, rep, frames,
                                                             size, seed):
                    name = f"{ident.name}_{sequence}_f{f:02d}.png"
                    cv2.imwrite(str(folder / name), image)
                    rows.append({"image": f"{ident.name}/{ident.name}_{sequence}/{name}",
                                 "label": expression, "subject": ident.name,
                                 "sequence": sequence, "frame": f, "source_split": "all",
                                 "gt_bbox": " ".join(map(str, _clip_box(box, size))),
                                 "gender": ident.gender, "landmarks": landmarks_text(points)})
                    bar.update()
    bar.close()
    return pd.DataFrame(rows, columns=["image", "label", "subject", "sequence", "frame",
                                       "source_split", "gt_bbox", "gender", "landmarks"])


def _clip_box(box: tuple, size: tuple) -> tuple:
    """Keep the box inside the image (it already is, unless the frame is tiny)."""
    x, y, w, h = box
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(size[0], x + w), min(size[1], y + h)
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)
