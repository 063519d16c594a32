"""Synthetic chest-radiograph phantoms for training and testing pacsflow's reference model.

A phantom is a deterministic function of a latent vector ``z`` (Z=16 numbers, standard normal)
and three finding flags (nodule, effusion, fracture). Every random choice -- body size, lung
shape, rib positions, exposure, and where and how large each finding is -- is read from one
component of ``z`` (see ``LATENT``), so ``render(z, flags)`` is a function, and the ``generate``
task "condition tokens naming the findings + noise z -> phantom" is a well-posed conditional
mapping rather than a guess. Degradations for the restore task (noise level, blur) are *not*
part of the phantom: they come from a separate generator, because a restorer must undo them,
not reproduce them.

Images are 64x64, one channel, values in [0,1], MONOCHROME2 (higher = brighter). Orientation
follows the radiological convention: the patient's right is on the image's left.

CLI: ``python model/phantoms.py --out DIR --n N --seed S`` writes ``phantom-NNNN.raw``
(little-endian uint16, round(v*4095), 64x64 row-major) and ``index.json`` (per phantom: finding
flags, boxes and locations, the report, every question with its answer, and z).

``python model/phantoms.py --out DIR --spec FILE`` renders given phantoms instead (``pacsflow
synth`` uses it to make DICOM studies with known findings). FILE is JSON: ``{"phantoms":
[{"seed": S, "flags": [nodule, effusion, fracture], "variants": V}, ...]}``. Phantom i is
``sample(default_rng(S), flags)``, written as ``phantom-iiii.raw``; each of its V-1 further
variants is the same phantom slightly blurred (``blur``, drawing from the same rng), written as
``phantom-iiii-v.raw``. ``index.json`` is as above (its top-level ``seed`` null), each entry
also holding its ``seed`` and the ``variants`` file names.
"""

import argparse
import json
import math
import os

import numpy as np

SIZE = 64
Z_DIM = 16
LABELS = ("nodule", "effusion", "fracture")
SIDES = ("right", "left")  # patient's side; "right" is the image's left half
ZONES = ("upper", "middle", "lower")
COUNT_WORDS = ("zero", "one", "two", "three")

# Which latent component drives which property. Components are mapped through the normal
# CDF to u in (0,1), so every property is a smooth function of z except the discrete choices:
# side and zone (thresholds on one component each) and which rib a fracture lies on (the one
# nearest the chosen height). A finding's components matter only when its flag is set.
LATENT = {
    "body_width": 0, "lung_height": 1, "heart_size": 2, "exposure": 3, "rib_phase": 4,
    "nodule_side": 5, "nodule_zone": 6, "nodule_x": 7, "nodule_size": 8,
    "effusion_side": 9, "effusion_level": 10,
    "fracture_side": 11, "fracture_zone": 12, "fracture_x": 13,
    "spine_density": 14, "lung_density": 15,
}

_COORD = (np.arange(SIZE, dtype=np.float64) + 0.5) / SIZE
_Y, _X = np.meshgrid(_COORD, _COORD, indexing="ij")
_PX = 1.0 / SIZE
_RIBS_PER_SIDE = 8


def _u(z, name):
    """Normal CDF of one latent component: a uniform number in (0,1)."""
    return 0.5 * (1.0 + math.erf(float(z[LATENT[name]]) / math.sqrt(2.0)))


def _side(z, name):
    return 0 if z[LATENT[name]] < 0 else 1


def _zone_and_offset(z, name):
    """Splits one component into a zone (0..2) and an offset in [-0.5, 0.5] within it."""
    u = min(_u(z, name), 1.0 - 1e-9) * 3.0
    zone = int(u)
    return zone, u - zone - 0.5


def _smooth_step(d, width):
    """0 outside, 1 inside, for a signed distance d (negative inside), softened over width."""
    return 1.0 / (1.0 + np.exp(np.clip(d / width, -50, 50)))


class Anatomy:
    """The normal-chest geometry a phantom's findings are placed on."""

    def __init__(self, z):
        self.body_half_width = 0.40 + 0.04 * (_u(z, "body_width") - 0.5)
        self.lung_top = 0.16 + 0.03 * (_u(z, "lung_height") - 0.5)
        self.lung_bottom = 0.78 + 0.08 * (_u(z, "lung_height") - 0.5)
        self.lung_half_width = 0.135 + 0.02 * (_u(z, "body_width") - 0.5)
        self.lung_offset = 0.20 + 0.02 * (_u(z, "body_width") - 0.5)
        self.heart_scale = 0.9 + 0.25 * _u(z, "heart_size")
        self.exposure = 0.9 + 0.2 * _u(z, "exposure")
        self.rib_phase = 0.02 * _u(z, "rib_phase")
        self.spine_density = 0.10 + 0.06 * _u(z, "spine_density")
        self.lung_density = 0.30 + 0.08 * _u(z, "lung_density")

    def lung_center_x(self, side):
        return 0.5 - self.lung_offset if side == 0 else 0.5 + self.lung_offset

    def lung_half_width_at(self, y):
        """Half width of a lung at height y (lungs are half-ellipses widening to the base)."""
        t = np.clip((y - self.lung_top) / (self.lung_bottom - self.lung_top), 0.0, 1.0)
        return self.lung_half_width * np.sqrt(np.clip(0.15 + 0.85 * (1.0 - (1.0 - t) ** 2), 0, 1))

    def lung_mask(self, side):
        half = self.lung_half_width_at(_Y)
        dx = np.abs(_X - self.lung_center_x(side)) - half
        dy = np.maximum(self.lung_top - _Y, _Y - self.lung_bottom)
        return _smooth_step(np.maximum(dx, dy), 0.6 * _PX)

    def zone_height(self):
        return (self.lung_bottom - self.lung_top) / 3.0

    def zone_y(self, zone, offset):
        """Height of a point in a lung zone; offsets keep clear of zone borders."""
        return self.lung_top + self.zone_height() * (zone + 0.5 + 0.55 * offset)

    def rib_y(self, k, x):
        """Centre line of rib k at x: ribs slope down laterally, as posterior ribs do."""
        lateral = np.abs(x - 0.5)
        return self.lung_top - 0.02 + self.rib_phase + 0.085 * k + 0.55 * lateral ** 2


def _body(anat):
    inside = _smooth_step(np.abs(_X - 0.5) - anat.body_half_width, 0.8 * _PX)
    shoulders = _smooth_step(0.06 - _Y, 1.5 * _PX)
    return 0.08 + 0.50 * inside * shoulders


def _heart(anat):
    cy, cx = 0.64, 0.56
    ry, rx = 0.13 * anat.heart_scale, 0.15 * anat.heart_scale
    r = np.sqrt(((_Y - cy) / ry) ** 2 + ((_X - cx) / rx) ** 2)
    return _smooth_step(r - 1.0, 0.05)


def _spine(anat):
    column = _smooth_step(np.abs(_X - 0.5) - 0.035, 0.5 * _PX) * (_Y > 0.06)
    discs = 0.25 * (np.cos(2 * np.pi * (_Y - anat.rib_phase) / 0.085) > 0.75)
    return anat.spine_density * column * (1.0 - discs)


def _rib_band(anat, k, side, fracture_x=None):
    """One rib on one side. A fracture, drawn as a healing one so that it shows at 64x64:
    a lucent gap, the lateral fragment stepped down, and a fusiform callus (the rib thickened
    and denser) around the gap."""
    on_side = (_X < 0.5) if side == 0 else (_X >= 0.5)
    lateral = np.abs(_X - 0.5)
    y = anat.rib_y(k, _X)
    half = np.full_like(_X, 1.0 * _PX)
    density = 1.0
    if fracture_x is not None:
        distance = np.abs(_X - fracture_x)
        y = y + (lateral > abs(fracture_x - 0.5)) * 2.0 * _PX
        callus = np.exp(-(distance / (3.0 * _PX)) ** 2)
        half = half + 2.0 * _PX * callus
        density = (1.0 + 2.0 * callus) * (1.0 - _smooth_step(distance - 1.0 * _PX, 0.3 * _PX))
    band = _smooth_step(np.abs(_Y - y) - half, 0.35 * _PX) * density
    extent = (lateral > 0.045) * (lateral < anat.body_half_width - 0.02)
    return band * on_side * extent


def _box(cy, cx, hy, hx):
    return [float(np.clip(v, 0.0, 1.0)) for v in (cy - hy, cx - hx, cy + hy, cx + hx)]


def _nodule(anat, z):
    side = _side(z, "nodule_side")
    zone, offset = _zone_and_offset(z, "nodule_zone")
    cy = anat.zone_y(zone, offset)
    half = float(anat.lung_half_width_at(cy))
    cx = anat.lung_center_x(side) + 0.55 * half * (2 * _u(z, "nodule_x") - 1)
    radius = (2.3 + 1.7 * _u(z, "nodule_size")) * _PX
    r = np.sqrt((_Y - cy) ** 2 + (_X - cx) ** 2)
    image = 0.30 * _smooth_step(r - radius, 0.5 * _PX)
    box = _box(cy, cx, radius + _PX, radius + _PX)
    return image, box, side, zone


def _effusion(anat, z):
    side = _side(z, "effusion_side")
    height = anat.lung_bottom - anat.lung_top
    level = anat.lung_bottom - height * (0.22 + 0.2 * _u(z, "effusion_level"))
    lateral_edge = anat.lung_center_x(side) + (-1 if side == 0 else 1) * anat.lung_half_width
    # The meniscus: fluid climbs higher along the lateral chest wall.
    lateral_t = np.clip(1.0 - np.abs(_X - lateral_edge) / (2 * anat.lung_half_width), 0, 1)
    surface = level - 0.07 * lateral_t ** 2
    fluid = _smooth_step(surface - _Y, 1.2 * _PX)
    cx = anat.lung_center_x(side)
    top = level - 0.07
    box = [float(top), float(cx - anat.lung_half_width - _PX),
           float(anat.lung_bottom + _PX), float(cx + anat.lung_half_width + _PX)]
    return fluid, [float(np.clip(v, 0, 1)) for v in box], side, 2


def _fracture_site(anat, z):
    """A point on a rib over the lung, in the central part of its zone (so the zone is clear)."""
    side = _side(z, "fracture_side")
    zone, offset = _zone_and_offset(z, "fracture_zone")
    lateral = anat.lung_offset + anat.lung_half_width * (1.2 * _u(z, "fracture_x") - 0.5)
    x = 0.5 - lateral if side == 0 else 0.5 + lateral
    target, half_zone = anat.zone_y(zone, offset), 0.35 * anat.zone_height()
    centre = anat.zone_y(zone, 0.0)
    candidates = [k for k in range(_RIBS_PER_SIDE)
                  if abs(anat.rib_y(k, x) - centre) <= half_zone]
    k = min(candidates, key=lambda k: abs(anat.rib_y(k, x) - target))
    return side, zone, k, x, float(anat.rib_y(k, x))


def render(z, flags):
    """Renders one phantom. Returns a dict with the two renderings and the ground truth.

    ``flags`` is a sequence of three booleans in LABELS order. Returned images are float32
    64x64 in [0,1]: ``radiograph`` and ``soft_tissue`` (the same anatomy with ribs and spine
    removed, like a dual-energy bone-suppressed image).
    """
    z = np.asarray(z, dtype=np.float64)
    anat = Anatomy(z)
    lungs = [anat.lung_mask(s) for s in (0, 1)]
    heart = _heart(anat)
    lung_field = np.maximum(lungs[0], lungs[1]) * (1.0 - heart)
    findings = {}

    soft = _body(anat) + 0.12 * heart * _smooth_step(np.abs(_X - 0.5) - 0.25, 0.02)
    if flags[1]:
        fluid, box, side, zone = _effusion(anat, z)
        lung_field = lung_field * (1.0 - 0.9 * fluid * lungs[side])
        findings["effusion"] = {"box": box, "side": SIDES[side], "zone": ZONES[zone]}
    soft = soft - anat.lung_density * lung_field
    if flags[0]:
        image, box, side, zone = _nodule(anat, z)
        soft = soft + image
        findings["nodule"] = {"box": box, "side": SIDES[side], "zone": ZONES[zone]}

    fracture = _fracture_site(anat, z) if flags[2] else None
    bones = _spine(anat)
    for side in (0, 1):
        for k in range(_RIBS_PER_SIDE):
            broken = fracture is not None and fracture[0] == side and fracture[2] == k
            bones = bones + 0.11 * _rib_band(anat, k, side, fracture[3] if broken else None)
    if fracture is not None:
        side, zone, _, x, y = fracture
        findings["fracture"] = {"box": _box(y, x, 4 * _PX, 4 * _PX),
                                "side": SIDES[side], "zone": ZONES[zone]}

    radiograph = np.clip(anat.exposure * (soft + bones), 0.0, 1.0).astype(np.float32)
    soft_tissue = np.clip(anat.exposure * soft, 0.0, 1.0).astype(np.float32)
    return {"radiograph": radiograph, "soft_tissue": soft_tissue, "findings": findings}


def blur(image, rng):
    """A slight random blur: each pixel mixed with its 4 neighbours (weight 0.1-0.25 each)."""
    w = rng.uniform(0.1, 0.25)
    padded = np.pad(image.astype(np.float64), 1, mode="edge")
    neighbours = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:])
    return ((1 - 4 * w) * padded[1:-1, 1:-1] + w * neighbours).astype(np.float32)


def degrade(image, rng):
    """The restore task's input: optional slight blur, then Gaussian noise of random sigma."""
    out = image.astype(np.float64)
    if rng.random() < 0.5:
        out = blur(out, rng)
    sigma = rng.uniform(0.04, 0.15)
    out = out + rng.normal(0.0, sigma, out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _location(f):
    return f"{f['side']} {f['zone']} zone"


def report(findings):
    """The templated report; findings appear in LABELS order."""
    sentences = []
    if "nodule" in findings:
        sentences.append(f"a nodule is seen in the {_location(findings['nodule'])} .")
    if "effusion" in findings:
        sentences.append(f"{findings['effusion']['side']} pleural effusion .")
    if "fracture" in findings:
        sentences.append(f"{_location(findings['fracture'])} rib fracture .")
    return " ".join(sentences) if sentences else "no acute findings ."


def questions():
    """Every question the phantoms answer, in a fixed order."""
    qs = [f"is there a {label} ?" for label in LABELS]
    qs += [f"where is the {label} ?" for label in LABELS]
    qs += [f"which side is the {label} ?" for label in LABELS]
    qs += ["how many findings ?", "is the study normal ?"]
    return qs


def answer(question, findings):
    """The answer to one of ``questions()`` for a phantom's findings."""
    words = question.split()
    label = next((w for w in words if w in LABELS), None)
    if words[0] == "is" and label is not None:
        return "yes" if label in findings else "no"
    if words[0] == "where":
        return _location(findings[label]) if label in findings else "none"
    if words[0] == "which":
        return findings[label]["side"] if label in findings else "none"
    if words[0] == "how":
        return COUNT_WORDS[len(findings)]
    if question == "is the study normal ?":
        return "no" if findings else "yes"
    raise ValueError(f"unknown question: {question}")


def condition_prompt(flags):
    """The canonical synthesis prompt naming the wanted findings, e.g. "effusion , fracture"."""
    names = [label for label, on in zip(LABELS, flags) if on]
    return " , ".join(names) if names else "normal"


def vocabulary_words():
    """Every word the templates above can produce, in a stable order."""
    words = ["a", "nodule", "is", "seen", "in", "the", "pleural", "effusion", "rib", "fracture",
             "zone", "no", "acute", "findings", ".", ",", "?", "there", "where", "which", "side",
             "how", "many", "study", "normal", "yes", "none"]
    words += list(SIDES) + list(ZONES) + list(COUNT_WORDS)
    seen = []
    for w in words:
        if w not in seen:
            seen.append(w)
    return seen


def sample(rng, flags=None, p_finding=0.5):
    """Draws latent z (and, unless given, independent finding flags) and renders them."""
    z = rng.standard_normal(Z_DIM).astype(np.float32)
    if flags is None:
        flags = tuple(bool(v) for v in rng.random(len(LABELS)) < p_finding)
    return z, tuple(flags), render(z, flags)


def combination(i):
    """The i-th of the 2**K finding combinations, cycling: a balanced set for evaluation."""
    return tuple(bool((i % 2 ** len(LABELS)) >> k & 1) for k in range(len(LABELS)))


def _write_dataset(out, n, seed):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        z, flags, ph = sample(rng)
        name = f"phantom-{i:04d}.raw"
        _write_raw(out, name, ph["radiograph"])
        entries.append(_entry(name, flags, z, ph))
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(_index(seed, entries), f, indent=1)


def _entry(name, flags, z, ph):
    return {
        "file": name,
        "labels": {label: flag for label, flag in zip(LABELS, flags)},
        "findings": ph["findings"],
        "report": report(ph["findings"]),
        "qa": [{"question": q, "answer": answer(q, ph["findings"])} for q in questions()],
        "z": [float(v) for v in z],
    }


def _index(seed, entries):
    return {
        "labels": list(LABELS), "rows": SIZE, "columns": SIZE, "bits_stored": 12,
        "dtype": "uint16 little-endian", "photometric": "MONOCHROME2", "value": "round(v*4095), v in [0,1]",
        "box": "normalized y0,x0,y1,x1", "seed": seed, "phantoms": entries,
    }


def _write_raw(out, name, image):
    np.round(image * 4095).astype("<u2").tofile(os.path.join(out, name))


def _write_spec(out, spec_path):
    """Renders the phantoms a spec file asks for (see the module's docstring)."""
    with open(spec_path) as f:
        spec = json.load(f)["phantoms"]
    os.makedirs(out, exist_ok=True)
    entries = []
    for i, item in enumerate(spec):
        flags = tuple(bool(v) for v in item["flags"])
        if len(flags) != len(LABELS):
            raise ValueError(f"phantom {i}: {len(flags)} flags, want {len(LABELS)} ({', '.join(LABELS)})")
        rng = np.random.default_rng(int(item["seed"]))
        z, flags, ph = sample(rng, flags)
        name = f"phantom-{i:04d}.raw"
        _write_raw(out, name, ph["radiograph"])
        entry = _entry(name, flags, z, ph)
        entry["seed"] = int(item["seed"])
        entry["variants"] = []
        for v in range(1, int(item.get("variants", 1))):
            variant = f"phantom-{i:04d}-{v}.raw"
            _write_raw(out, variant, blur(ph["radiograph"], rng))
            entry["variants"].append(variant)
        entries.append(entry)
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(_index(None, entries), f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spec", help="JSON file naming the phantoms to render (replaces --n and --seed)")
    args = ap.parse_args()
    if args.spec:
        _write_spec(args.out, args.spec)
    else:
        _write_dataset(args.out, args.n, args.seed)


if __name__ == "__main__":
    main()
