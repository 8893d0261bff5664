"""What a SYNTH face shows: the 12 AUs, the identity and frame parameters of a face
(:class:`FaceParams`, :func:`sample_params`) and AU labels with realistic co-occurrence
(:func:`sample_labels`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

#: The 12 AUs of the synthetic set, in label order.
SYNTH_AUS = [1, 2, 4, 5, 6, 7, 9, 12, 15, 17, 25, 26]


@dataclass
class FaceParams:
    """Everything except the AU labels that decides how a face is drawn.

    Identity (fixed per subject): skin, hair, iris colours (BGR), face half-width/height,
    eye spacing/size, brow thickness, mouth width, nose length.
    Frame jitter: rotation (degrees), scale, translation (canonical px), lighting gradient
    (direction in degrees, strength), background colour/texture, noise sigma and seed, gaze.
    """

    skin: Tuple[float, float, float] = (120.0, 150.0, 200.0)
    hair: Tuple[float, float, float] = (30.0, 35.0, 45.0)
    iris: Tuple[float, float, float] = (40.0, 60.0, 90.0)
    face_w: float = 66.0
    face_h: float = 88.0
    eye_dx: float = 29.0
    eye_w: float = 14.0
    brow_thick: float = 6.0
    mouth_w: float = 23.0
    nose_len: float = 38.0
    angle: float = 0.0
    scale: float = 1.0
    tx: float = 0.0
    ty: float = 0.0
    light_dir: float = 0.0
    light_strength: float = 0.0
    bg_color: Tuple[float, float, float] = (150.0, 150.0, 150.0)
    bg_texture: float = 0.0
    noise_sigma: float = 0.0
    noise_seed: int = 0
    gaze: Tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


IDENTITY_FIELDS = ("skin", "hair", "iris", "face_w", "face_h", "eye_dx", "eye_w", "brow_thick",
                   "mouth_w", "nose_len")

# Skin tones (BGR), light to dark; identities interpolate between neighbours.
_SKIN_TONES = np.array([[185, 205, 240], [150, 180, 225], [120, 150, 200], [95, 125, 175],
                        [75, 100, 145], [60, 82, 122]], dtype=np.float64)
_HAIR_COLOURS = np.array([[20, 22, 25], [30, 40, 60], [40, 70, 110], [90, 140, 180],
                          [120, 120, 125]], dtype=np.float64)


def sample_identity(rng: np.random.Generator) -> dict:
    """Identity fields of :class:`FaceParams` for one subject."""
    t = rng.uniform(0, len(_SKIN_TONES) - 1)
    i = min(int(t), len(_SKIN_TONES) - 2)
    skin = _SKIN_TONES[i] * (1 - (t - i)) + _SKIN_TONES[i + 1] * (t - i)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    iris = np.array([40, 60, 90]) * rng.uniform(0.6, 1.4, 3)
    return dict(skin=tuple(float(v) for v in skin), hair=tuple(float(v) for v in hair),
                iris=tuple(float(v) for v in iris),
                face_w=float(rng.uniform(62, 71)), face_h=float(rng.uniform(84, 93)),
                eye_dx=float(rng.uniform(27, 31)), eye_w=float(rng.uniform(12.5, 15)),
                brow_thick=float(rng.uniform(5, 7.5)), mouth_w=float(rng.uniform(21, 26)),
                nose_len=float(rng.uniform(34, 40)))


def sample_params(rng: np.random.Generator, identity: Optional[dict] = None) -> FaceParams:
    """Random :class:`FaceParams`: a new identity unless ``identity`` (from
    :func:`sample_identity`) is given, plus fresh frame jitter."""
    ident = sample_identity(rng) if identity is None else identity
    bg = rng.uniform(40, 220, 3)
    return FaceParams(
        **ident,
        angle=float(rng.uniform(-6, 6)), scale=float(rng.uniform(0.93, 1.05)),
        tx=float(rng.uniform(-7, 7)), ty=float(rng.uniform(-6, 6)),
        light_dir=float(rng.uniform(0, 360)), light_strength=float(rng.uniform(0, 0.25)),
        bg_color=tuple(float(v) for v in bg), bg_texture=float(rng.uniform(0, 40)),
        noise_sigma=float(rng.uniform(1, 5)), noise_seed=int(rng.integers(2**31 - 1)),
        gaze=(float(rng.uniform(-3, 3)), float(rng.uniform(-1.5, 1.5))))


def neutral_params() -> FaceParams:
    """A default identity with no pose, lighting or noise jitter (for tests and figures)."""
    return FaceParams()


def labels_dict(labels: Sequence[int]) -> Dict[int, bool]:
    """{AU: present} of 12 0/1 labels in :data:`SYNTH_AUS` order (render_face's check of its input)."""
    labels = [int(v) for v in labels]
    if len(labels) != len(SYNTH_AUS):
        raise ValueError(f"render_face: expected {len(SYNTH_AUS)} labels for AUs {SYNTH_AUS}, "
                         f"got {len(labels)}")
    return {au: v == 1 for au, v in zip(SYNTH_AUS, labels)}


# Expression prototypes: (weight, {AU: probability}). A frame mixes 0-2 prototypes, then each AU
# may also switch on alone; this gives the co-occurrence structure AU graphs are meant to learn
# (AU6 with AU12, AU1 with AU2, AU26 with AU25, AU12 rarely with AU15).
_PROTOTYPES = [
    (0.30, {6: 0.8, 12: 0.95, 25: 0.35, 26: 0.15}),              # smile / laugh
    (0.18, {1: 0.9, 2: 0.9, 5: 0.75, 25: 0.65, 26: 0.65}),         # surprise
    (0.15, {1: 0.55, 4: 0.75, 15: 0.85, 17: 0.6}),                 # sadness
    (0.15, {4: 0.9, 7: 0.85, 5: 0.3, 17: 0.45, 25: 0.15}),         # anger
    (0.12, {9: 0.9, 4: 0.6, 7: 0.45, 15: 0.3, 17: 0.4, 25: 0.3}),  # disgust
    (0.10, {25: 0.85, 26: 0.45, 17: 0.2}),                         # talking
]
_N_PROTOTYPES_P = (0.15, 0.55, 0.30)  # P(0, 1, 2 prototypes in a frame)
_SPONTANEOUS_P = 0.06


def sample_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 12) int64 0/1 labels for :data:`SYNTH_AUS` with realistic co-occurrence.

    Prevalences lie between ~15% and ~50%; P(AU12 | AU6), P(AU25 | AU26) and P(AU2 | AU1)
    are high, AU12 and AU15 rarely occur together.
    """
    col = {au: i for i, au in enumerate(SYNTH_AUS)}
    weights = np.array([w for w, _ in _PROTOTYPES])
    probs = np.zeros((len(_PROTOTYPES), len(SYNTH_AUS)))
    for k, (_, table) in enumerate(_PROTOTYPES):
        for au, pr in table.items():
            probs[k, col[au]] = pr
    n_proto = rng.choice(3, size=n, p=_N_PROTOTYPES_P)
    labels = rng.random((n, len(SYNTH_AUS))) < _SPONTANEOUS_P
    for slot in range(2):
        active = n_proto > slot
        proto = rng.choice(len(_PROTOTYPES), size=n, p=weights / weights.sum())
        labels |= active[:, None] & (rng.random((n, len(SYNTH_AUS))) < probs[proto])
    # Lip corners cannot go up and down at once: AU12 mostly wins over AU15.
    both = labels[:, col[12]] & labels[:, col[15]]
    drop = rng.random(n) < 0.85
    labels[both & drop, col[15]] = False
    # A dropped jaw mostly parts the lips.
    jaw_only = labels[:, col[26]] & ~labels[:, col[25]]
    labels[jaw_only & (rng.random(n) < 0.85), col[25]] = True
    return labels.astype(np.int64)
