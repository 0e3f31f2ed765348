"""Captioned scenes of coloured shapes, generated in code: the data of the pack's text-conditioned reference model.

A scene is 1-3 objects on a dark, lightly textured background, ``IMAGE_SIZE`` x ``IMAGE_SIZE`` RGB in [-1, 1].
An object is one of ``COLOURS`` x ``SHAPES`` (16 kinds), at most one of each kind per scene, placed without
overlap. Its caption names the objects in a random order, ``"red circle and blue square"``. In training
(``caption_for``), with probability ``p_partial`` an object is named by its colour or its shape alone (``"red and
blue square"``), so single-word prompts ("red", "circle") mean something to the model, and with ``p_omit`` an
object other than the first named is left out, so a prompt means "a scene that shows this" rather than "a scene
that shows only this" - as a Stable Diffusion prompt does ("Taylor Swift" images include horses).

The labels are exact: ``present [N, 16]`` marks each kind in the scene (index ``colour * 4 + shape``); the
evaluator (``reference_model.classifier`` with 16 outputs) is trained on them.

Generalisation: the kind pairs in ``HELDOUT_PAIRS`` never appear together in a training scene
(``exclude_heldout=True``); the held-out scenes are those holding at least one such pair.

Words: ``tokenize("red circle, blue square")`` -> ``CONTEXT_LENGTH`` token ids ``[BOS, red, circle, and, blue,
square, EOS, PAD, ...]``; a comma is a synonym of "and". The empty prompt is ``[BOS, EOS, PAD, ...]`` and goes
through the same encoder as every other prompt (as the empty prompt does in Stable Diffusion).
Pure numpy / torch; never imports ComfyUI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle", "cross")
#: RGB in [0, 1]
COLOUR_RGB = {"red": (0.92, 0.16, 0.14), "green": (0.16, 0.78, 0.22), "blue": (0.20, 0.32, 0.96),
              "yellow": (0.96, 0.86, 0.16)}
KINDS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
NUM_KINDS = len(KINDS)
MAX_OBJECTS = 3
#: kind pairs never shown together in training (generalisation check)
HELDOUT_PAIRS = (("green triangle", "yellow cross"), ("blue circle", "yellow square"), ("red cross", "green square"))

PAD, BOS, EOS, AND = "<pad>", "<bos>", "<eos>", "and"
VOCAB = (PAD, BOS, EOS, AND) + COLOURS + SHAPES
TOKEN_ID = {w: i for i, w in enumerate(VOCAB)}
#: BOS + 3 objects x 2 words + 2 "and" + EOS = 10; two spare
CONTEXT_LENGTH = 12


def kind_index(name: str) -> int:
    """``kind_index("red circle")`` -> 0 .. 15 (colour-major)."""
    try:
        return KINDS.index(" ".join(name.split()))
    except ValueError:
        raise ValueError(f"unknown object {name!r}; objects are a colour {COLOURS} and a shape {SHAPES}") from None


_HELDOUT_IDX = tuple((kind_index(a), kind_index(b)) for a, b in HELDOUT_PAIRS)


def words(text: str) -> list[str]:
    """Lower-case words of a prompt; commas become "and", repeated "and"s collapse, leading/trailing ones drop."""
    raw = re.findall(r"[a-z]+|,", text.lower())
    out: list[str] = []
    for w in raw:
        w = AND if w == "," else w
        if w == AND and (not out or out[-1] == AND):
            continue
        out.append(w)
    while out and out[-1] == AND:
        out.pop()
    return out


def tokenize(text: str) -> torch.Tensor:
    """Prompt -> ``[CONTEXT_LENGTH]`` long token ids. Raises ValueError naming an unknown word or a too-long prompt."""
    ws = words(text)
    unknown = [w for w in ws if w not in TOKEN_ID]
    if unknown:
        raise ValueError(f"unknown word(s) {unknown} in {text!r}; the model knows the colours {list(COLOURS)}, the "
                         f"shapes {list(SHAPES)} and 'and' (or a comma)")
    if len(ws) + 2 > CONTEXT_LENGTH:
        raise ValueError(f"prompt {text!r} has {len(ws)} words; at most {CONTEXT_LENGTH - 2} fit (three objects)")
    ids = [TOKEN_ID[BOS]] + [TOKEN_ID[w] for w in ws] + [TOKEN_ID[EOS]]
    ids += [TOKEN_ID[PAD]] * (CONTEXT_LENGTH - len(ids))
    return torch.tensor(ids, dtype=torch.long)


def tokenize_batch(texts: Sequence[str]) -> torch.Tensor:
    return torch.stack([tokenize(t) for t in texts]) if texts else torch.zeros(0, CONTEXT_LENGTH, dtype=torch.long)


@dataclass
class Scenes:
    images: torch.Tensor  # float32 [N, 3, S, S] in [-1, 1]
    present: torch.Tensor  # float32 [N, 16] exact labels (kind = colour * 4 + shape)
    captions: list[str]
    objects: list[list[int]]  # each scene's kinds, in caption order


def _shape_mask(shape: str, gx: torch.Tensor, gy: torch.Tensor, cx: float, cy: float, s: float) -> torch.Tensor:
    """Supersampled coverage of one object; (gx, gy) pixel-unit coordinates of the fine grid."""
    dx, dy = gx - cx, gy - cy
    if shape == "circle":
        return (dx * dx + dy * dy) <= s * s
    if shape == "square":
        h = 0.82 * s
        return (dx.abs() <= h) & (dy.abs() <= h)
    if shape == "triangle":  # apex up, base at dy = +0.85 s, half-width s at the base
        top, bottom = -s, 0.85 * s
        return (dy >= top) & (dy <= bottom) & (dx.abs() <= (dy - top) * s / (bottom - top))
    if shape == "cross":
        w = 0.36 * s
        return ((dx.abs() <= w) & (dy.abs() <= s)) | ((dy.abs() <= w) & (dx.abs() <= s))
    raise ValueError(shape)


def _layout(rng: np.random.Generator, n_obj: int, size: int) -> list[tuple[float, float, float]] | None:
    """Centres and half-sizes of ``n_obj`` non-overlapping objects (bounding boxes 0.6 px apart), or None."""
    placed: list[tuple[float, float, float]] = []
    for _ in range(n_obj):
        for _try in range(60):
            s = float(rng.uniform(2.5, 3.1))
            cx, cy = (float(rng.uniform(s + 0.3, size - s - 0.3)) for _ in range(2))
            if all(max(abs(cx - px), abs(cy - py)) >= s + ps + 0.6 for px, py, ps in placed):
                placed.append((cx, cy, s))
                break
        else:
            return None
    return placed


def _has_heldout_pair(kinds: Sequence[int]) -> bool:
    ks = set(kinds)
    return any(a in ks and b in ks for a, b in _HELDOUT_IDX)


def caption_for(kinds: Sequence[int], rng: np.random.Generator, p_partial: float = 0.0, p_omit: float = 0.0) -> str:
    """Caption naming ``kinds`` in the given order; each is shortened to its colour or shape with ``p_partial``,
    and each but the first is left out with ``p_omit`` (captions, like real ones, need not name everything)."""
    parts = []
    kinds = [k for i, k in enumerate(kinds) if i == 0 or rng.random() >= p_omit]
    for k in kinds:
        colour, shape = KINDS[k].split()
        u = rng.random()
        parts.append(colour if u < p_partial / 2 else shape if u < p_partial else f"{colour} {shape}")
    return f" {AND} ".join(parts)


def generate_scenes(n: int, seed: int, *, size: int = IMAGE_SIZE, exclude_heldout: bool = True,
                    only_heldout: bool = False, p_partial: float = 0.0, kinds: Sequence[Sequence[int]] | None = None,
                    supersample: int = 4) -> Scenes:
    """``n`` random scenes (deterministic in ``seed``). ``kinds`` fixes each scene's objects (else 1-3 random kinds,
    distinct); ``exclude_heldout`` drops scenes holding a held-out pair, ``only_heldout`` keeps only those."""
    rng = np.random.default_rng(seed)
    ss = supersample
    fine = (torch.arange(size * ss, dtype=torch.float32) + 0.5) / ss
    gy, gx = torch.meshgrid(fine, fine, indexing="ij")
    rgb = torch.tensor([COLOUR_RGB[c] for c in COLOURS], dtype=torch.float32)  # [4, 3]
    images = torch.empty(n, 3, size, size)
    present = torch.zeros(n, NUM_KINDS)
    captions: list[str] = []
    objects: list[list[int]] = []
    i = 0
    while i < n:
        if kinds is not None:
            ks = list(kinds[i])
        else:
            n_obj = int(rng.integers(1, MAX_OBJECTS + 1))
            ks = [int(k) for k in rng.choice(NUM_KINDS, size=n_obj, replace=False)]
            held = _has_heldout_pair(ks)
            if (exclude_heldout and held) or (only_heldout and not held):
                continue
        layout = _layout(rng, len(ks), size)
        if layout is None:
            continue
        # background: a dark grey level with a faint smooth gradient (lightly textured)
        level = float(rng.uniform(0.08, 0.22))
        gxn, gyn = rng.normal(0.0, 0.03, size=2)
        axis = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) / size
        bg = level + gxn * axis[None, :] + gyn * axis[:, None]
        img = bg[None].expand(3, size, size).clone()
        for k, (cx, cy, s) in zip(ks, layout):
            colour, shape = divmod(k, len(SHAPES))
            cover = _shape_mask(SHAPES[shape], gx, gy, cx, cy, s).float()
            cover = F.avg_pool2d(cover[None, None], ss)[0, 0]  # anti-aliased coverage in [0, 1]
            img = img * (1 - cover) + rgb[colour][:, None, None] * cover
            present[i, k] = 1.0
        images[i] = img * 2 - 1
        order = [ks[j] for j in rng.permutation(len(ks))]
        captions.append(caption_for(order, rng, p_partial))
        objects.append(order)
        i += 1
    return Scenes(images.clamp(-1, 1), present, captions, objects)


def named_objects(text: str) -> list[tuple[str | None, str | None]]:
    """The objects a prompt names, as (colour, shape) with None for a missing word: "red circle and blue" ->
    [("red", "circle"), ("blue", None)]. Objects are separated by "and" / commas."""
    out: list[tuple[str | None, str | None]] = []
    group: list[str] = []
    for w in words(text) + [AND]:
        if w != AND:
            group.append(w)
            continue
        if group:
            colour = next((g for g in group if g in COLOURS), None)
            shape = next((g for g in group if g in SHAPES), None)
            out.append((colour, shape))
        group = []
    return out


def scene_kinds(caption: str) -> list[int]:
    """Kinds fully named in a caption (``"red circle and blue"`` -> [red circle]); partial names are skipped."""
    return [kind_index(f"{c} {s}") for c, s in named_objects(caption) if c and s]


def matching_kinds(text: str) -> list[int]:
    """Every kind a prompt's objects describe: "red circle" -> [red circle]; "red" -> the four red kinds;
    "circle" -> the four circles; "red, square" -> red kinds and squares."""
    out: set[int] = set()
    for colour, shape in named_objects(text):
        out |= {k for k, name in enumerate(KINDS)
                if (colour is None or name.split()[0] == colour) and (shape is None or name.split()[1] == shape)}
    return sorted(out)


__all__ = [
    "AND", "BOS", "COLOURS", "COLOUR_RGB", "CONTEXT_LENGTH", "EOS", "HELDOUT_PAIRS", "IMAGE_SIZE", "KINDS",
    "MAX_OBJECTS", "NUM_KINDS", "PAD", "SHAPES", "Scenes", "TOKEN_ID", "VOCAB", "caption_for", "generate_scenes",
    "kind_index", "matching_kinds", "named_objects", "scene_kinds", "tokenize", "tokenize_batch", "words",
]
