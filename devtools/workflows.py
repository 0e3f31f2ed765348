"""The shipped example workflows (``example_workflows/*.json``) and the headless-browser tooling behind them.

The workflows are written here as API-format prompts plus a layout, and turned into UI-format JSON by the real
ComfyUI frontend in headless chromium (``app.loadApiJson`` -> layout, notes, groups -> ``app.graphToPrompt()``,
exactly what the frontend's Export writes), with a thumbnail of the loaded graph beside each (``<name>.jpg``,
what the template browser asks ``/api/workflow_templates/<pack>/<name>.jpg`` for). Regenerate them with::

    OMP_NUM_THREADS=1 .venv/bin/python -m devtools.workflows          # rewrites example_workflows/*.json + *.jpg
    OMP_NUM_THREADS=1 .venv/bin/python -m devtools.workflows --check  # exit 1 if they are out of date
    OMP_NUM_THREADS=1 .venv/bin/python -m devtools.workflows --docs   # docs/*.png (live curve, plots, removal)
    OMP_NUM_THREADS=1 .venv/bin/python -m devtools.workflows --thumbnails-only NAME  # a hand-made workflow

The tests (tests/e2e/test_workflows.py, test_web_ui.py) use the same browser helpers to load the shipped files
through the template endpoint and convert them back to API format (``app.loadGraphData`` +
``app.graphToPrompt()``), the way a user's browser does before queueing.

Browser: Debian's ``/usr/bin/chromium`` (or ``$DNG_CHROMIUM``) driven by ``playwright`` from PyPI; no browser is
ever downloaded. ``scripts/setup_env.sh`` installs both.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dng_defaults import dng_node_defaults
from .host import REPO_ROOT

WORKFLOWS_DIR = REPO_ROOT / "example_workflows"

# The file names users have: the frontend's own default workflow loads v1-5-pruned-emaonly-fp16.safetensors.
SD15_CKPT = "v1-5-pruned-emaonly-fp16.safetensors"
SDXL_CKPT = "sd_xl_base_1.0.safetensors"
# As in ComfyUI's own templates: the frontend offers these downloads when the file is missing.
MODEL_SOURCES = {
    SD15_CKPT: {"name": SD15_CKPT, "directory": "checkpoints",
                "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
                       "v1-5-pruned-emaonly-fp16.safetensors?download=true"},
    SDXL_CKPT: {"name": SDXL_CKPT, "directory": "checkpoints",
                "url": "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/"
                       "sd_xl_base_1.0.safetensors?download=true"},
}

DNG_NODES = {"DynamicNegativeGuidance", "DNGSampler", "DNGGuider"}
PATCH_NODES = DNG_NODES | {"DNGNegativePrompting", "DNGSafeLatentDiffusion"}


DNG_DEFAULTS = dng_node_defaults()

NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"  # ComfyUI's "yellow" node colour, as its templates use for notes
# LiteGraph group colours: yellow, pale blue, blue, green
GROUP_COLORS = {"plain": "#b58b2a", "np": "#3f789e", "sld": "#88A", "dng": "#8A8"}


# ------------------------------------------------------------------------------------------------------------
# The workflows, as API prompts + layout


@dataclass
class Note:
    text: str
    size: tuple[float, float] = (400, 300)
    title: str = "Note"


@dataclass
class Group:
    title: str
    nodes: list[str]  # API ids; the group is fitted around them
    color: str = "#3f789e"


@dataclass
class Block:
    """Nodes on a grid at (x, y): ``rows`` of API ids (``None`` leaves a cell empty, ``"note:<i>"`` places
    ``notes[i]``); column c starts at ``x + sum(widths[:c])``; each row is as tall as its tallest node (sizes
    come from the frontend), plus the title bar and a gap."""
    x: float
    y: float
    widths: list[float]
    rows: list[list[str | None]]


@dataclass
class WorkflowSpec:
    name: str
    description: str  # one line, also used in the README's Workflows section
    prompt: dict  # API format; "_meta": {"title"} becomes the node title
    blocks: list[Block]
    notes: list[Note]
    sizes: dict[str, tuple[float, float]] = field(default_factory=dict)  # [width, height]; 0 = the node's own
    groups: list[Group] = field(default_factory=list)
    thumbnail: list[str] | None = None  # the nodes the thumbnail shows (None: the whole graph)

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-dynamic-negative-guidance/workflows/{self.name}"))


def _node(class_type: str, title: str | None = None, **inputs) -> dict:
    n = {"class_type": class_type, "inputs": inputs}
    if title:
        n["_meta"] = {"title": title}
    return n


def _base(ckpt: str, positive: str, negative: str, width: int, height: int, batch: int) -> dict:
    """Loader "1", positive "2", negative (concept) "3", empty "4", latent "5"."""
    return {
        "1": _node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=ckpt),
        "2": _node("CLIPTextEncode", "Positive prompt", text=positive, clip=["1", 1]),
        "3": _node("CLIPTextEncode", "Negative prompt = the concept to remove", text=negative, clip=["1", 1]),
        "4": _node("CLIPTextEncode", "Empty prompt (unconditional)", text="", clip=["1", 1]),
        "5": _node("EmptyLatentImage", "Image size", width=width, height=height, batch_size=batch),
    }


_BASE_SIZES = {"1": (340, 0), "2": (400, 160), "3": (400, 120), "4": (400, 90), "5": (400, 0)}


def _ksampler(model, seed, steps, cfg, sampler="euler_ancestral", title="KSampler", negative=("3", 0)) -> dict:
    return _node("KSampler", title, model=list(model), seed=seed, steps=steps, cfg=cfg, sampler_name=sampler,
                 scheduler="normal", positive=["2", 0], negative=list(negative), latent_image=["5", 0], denoise=1.0)


def _plot(trace, latent, title="DNG Trace Plot") -> dict:
    return _node("DNGTracePlot", title, trace=list(trace), latent=list(latent), log_scale=False, save_json=False,
                 filename_prefix="dng_trace", width=768, height=512)


def _save(images, prefix, title="Save Image") -> dict:
    return _node("SaveImage", title, images=list(images), filename_prefix=prefix)


def _loading_note(ckpt: str) -> str:
    src = MODEL_SOURCES[ckpt]["url"].split("?")[0]
    return (f"Load: {ckpt} in ComfyUI/models/checkpoints ({src}). Any checkpoint of the same family works: "
            "pick yours in Load Checkpoint.")


_DNG_HOW = ("The KSampler's negative prompt is the concept to remove; Dynamic Negative Guidance applies it only "
            "as strongly as the image being generated seems to contain it (lambda_t = lambda0 p_t / (1 - p_t)). "
            "The empty prompt is the unconditional model it is measured against: keep it empty.")


def _single(name, description, p, note_text, note_height) -> WorkflowSpec:
    """Layout of the one-sampler workflows: loader + note | prompts | patch | sampler + plot | decode + save."""
    return WorkflowSpec(
        name, description, p,
        blocks=[Block(0, 0, [360], [["1"], ["note:0"]]),
                Block(380, 0, [440], [["2"], ["3"], ["4"], ["5"]]),
                Block(840, 0, [360, 360, 520], [["10", "11", "12"], [None, "14", "13"]])],
        sizes={**_BASE_SIZES, "13": (500, 520), "14": (340, 400)},
        notes=[Note(note_text, (340, note_height))], thumbnail=["3", "4", "10", "11", "14"])


def _add_dng_chain(p: dict, seed: int, steps: int, cfg: float, prefix: str) -> None:
    """DNG patch ("10") -> KSampler ("11") -> VAE Decode ("12") -> Save ("13"), and the trace plot ("14")."""
    p["10"] = _node("DynamicNegativeGuidance", "Dynamic Negative Guidance", model=["1", 0],
                    empty_conditioning=["4", 0], **DNG_DEFAULTS)
    p["11"] = _ksampler(("10", 0), seed, steps, cfg)
    p["12"] = _node("VAEDecode", "VAE Decode", samples=["11", 0], vae=["1", 2])
    p["13"] = _save(("12", 0), prefix)
    p["14"] = _plot(("10", 1), ("11", 0))

def sd15_txt2img() -> WorkflowSpec:
    p = _base(SD15_CKPT, "a cozy living room with a pet sleeping on the sofa, photograph, soft window light",
              "a dog", 512, 512, 2)
    _add_dng_chain(p, 1234, 25, 7.0, "dng_sd15")
    note = ("SD1.5 text-to-image with Dynamic Negative Guidance (DNG).\n\n" + _DNG_HOW + "\n\n"
            "Here: a living room with a pet, without dogs. The batch of 2 shows that the guidance is tracked per "
            "image: while sampling, the DNG node draws lambda_t and p_t live, one line per image; DNG Trace Plot "
            "keeps the same curves as an image. Images where no dog shows up get (almost) no negative guidance.\n\n"
            + _loading_note(SD15_CKPT) +
            "\n\nThe DNG settings are the node defaults, chosen on the pack's digit reference models for every "
            "sampler class and step count; they are not verified on Stable Diffusion.")
    return _single("dng_sd15_txt2img", "SD1.5 text-to-image: the DNG patch before a KSampler, with the trace plot.",
                   p, note, 520)


def sdxl() -> WorkflowSpec:
    p = _base(SDXL_CKPT, "a red vintage bicycle leaning against a wall in a sunny street, photograph",
              "a car", 1024, 1024, 1)
    _add_dng_chain(p, 42, 30, 6.0, "dng_sdxl")
    note = ("SDXL with Dynamic Negative Guidance (DNG), 1024x1024.\n\n" + _DNG_HOW + "\n\n"
            "Here: a street scene without cars. The wiring is the same as for SD1.5; the patch works with any "
            "model ComfyUI samples with a KSampler, SDXL's size conditioning included.\n\n"
            + _loading_note(SDXL_CKPT) + "\n\nThe trace plot shows lambda_t and p_t over the 30 steps.")
    return _single("dng_sdxl", "SDXL base 1.0 at 1024x1024 with the DNG patch and the trace plot.", p, note, 440)


def _method_column(p, key, seed, steps, cfg, prefix):
    """Patch (except plain) -> KSampler -> VAE Decode -> Save Image (+ plot); returns the ids top to bottom."""
    base = {"plain": 20, "np": 30, "sld": 40, "dng": 50}[key]
    patch, ks, dec, save, plot = (str(base + i) for i in range(5))
    title = {"plain": "Plain (no negative guidance)", "np": "Negative Prompting", "sld": "Safe Latent Diffusion",
             "dng": "Dynamic Negative Guidance"}[key]
    if key == "np":
        p[patch] = _node("DNGNegativePrompting", "Negative Prompting (paper form)", model=["1", 0],
                         empty_conditioning=["4", 0], scale=0.5)
    elif key == "sld":
        p[patch] = _node("DNGSafeLatentDiffusion", "Safe Latent Diffusion (baseline)", model=["1", 0],
                         empty_conditioning=["4", 0], preset="medium", warmup=7, safety_scale=2000.0,
                         threshold=0.025, momentum_scale=0.5, momentum_beta=0.7)
    elif key == "dng":
        p[patch] = _node("DynamicNegativeGuidance", "Dynamic Negative Guidance", model=["1", 0],
                         empty_conditioning=["4", 0], **DNG_DEFAULTS)
    if key == "plain":
        # no negative guidance at all: the empty prompt as the KSampler's negative. The reference image.
        p[ks] = _ksampler(("1", 0), seed, steps, cfg, title="KSampler (plain: no negative)", negative=("4", 0))
    else:
        p[ks] = _ksampler((patch, 0), seed, steps, cfg, title=f"KSampler ({key.upper()})")
    p[dec] = _node("VAEDecode", "VAE Decode", samples=[ks, 0], vae=["1", 2])
    p[save] = _save((dec, 0), f"{prefix}_{key}", title)
    if key == "plain":
        return [None, ks, dec, save, None]
    p[plot] = _plot((patch, 1), (ks, 0), {"np": "NP: scale per step", "sld": "SLD: scale per step",
                                          "dng": "DNG: lambda_t and p_t per step"}[key])
    return [patch, ks, dec, save, plot]


_GROUP_TITLES = {"plain": "Plain (no negative guidance)", "np": "Negative Prompting (paper form)",
                 "sld": "Safe Latent Diffusion", "dng": "Dynamic Negative Guidance"}


def _side_by_side(name, description, p, keys, seed, steps, cfg, prefix, note_text, note_height) -> WorkflowSpec:
    cols = {k: _method_column(p, k, seed, steps, cfg, prefix) for k in keys}
    rows = [[cols[k][r] for k in keys] for r in range(5)]
    sizes = dict(_BASE_SIZES)
    for k in keys:
        sizes[cols[k][3]] = (360, 400)
        if cols[k][4]:
            sizes[cols[k][4]] = (360, 380)
    return WorkflowSpec(
        name, description, p,
        blocks=[Block(0, 0, [360], [["1"], ["note:0"]]), Block(380, 0, [440], [["2"], ["3"], ["4"], ["5"]]),
                Block(860, 0, [400] * len(keys), rows)],
        sizes=sizes,
        groups=[Group(_GROUP_TITLES[k], [i for i in cols[k] if i], GROUP_COLORS[k]) for k in keys],
        notes=[Note(note_text, (340, note_height))],
        thumbnail=[i for k in keys for i in cols[k][:2] + ([cols[k][4]] if len(keys) < 3 else []) if i])


def compare_methods() -> WorkflowSpec:
    p = _base(SD15_CKPT, "a family picnic in a park, people sitting on a blanket, summer, photograph",
              "a dog", 512, 512, 1)
    note = ("One seed, four ways of using the same negative prompt, side by side (the comparison of Koulischer et "
            "al., ICLR 2025):\n\n"
            "- Plain: no negative guidance at all (the empty prompt as the negative). The reference image.\n"
            "- Negative Prompting (paper form): a constant negative scale at every step, for every image.\n"
            "- Safe Latent Diffusion: element-wise safety guidance after a warm-up (diffusers' SLD, preset "
            "medium).\n"
            "- Dynamic Negative Guidance: the negative scale follows p_t, the tracked probability that this image "
            "contains the concept.\n\n"
            "All four share the model, prompts, seed and sampler; each plot shows that method's applied scale per "
            "step. Here the concept is 'a dog' in a picnic scene: compare where the dog disappears and how much "
            "of the rest of the image changes.\n\n" + _loading_note(SD15_CKPT))
    return _side_by_side(
        "dng_compare_methods", "One seed side by side: plain, Negative Prompting, Safe Latent Diffusion and DNG, "
        "with their guidance plots.", p, ["plain", "np", "sld", "dng"], 2025, 25, 7.0, "compare", note, 620)


def unrelated_negative() -> WorkflowSpec:
    p = _base(SD15_CKPT, "a bowl of fresh fruit on a wooden kitchen table, still life photograph",
              "a cat", 512, 512, 1)
    note = ("A negative prompt unrelated to the image: 'a cat' while asking for a bowl of fruit.\n\n"
            "Negative Prompting (paper form) pushes away from the negative at the same scale at every step "
            "anyway, which changes an image that never contained a cat. Dynamic Negative Guidance measures, at "
            "every step, how likely it is that the image contains the concept: p_t stays near its prior, so "
            "lambda_t stays near zero and DNG switches itself off. Compare the two plots (scale per step) and the "
            "two images, which share the seed.\n\n" + _loading_note(SD15_CKPT))
    return _side_by_side(
        "dng_unrelated_negative", "An unrelated negative prompt: DNG switches itself off, Negative Prompting does "
        "not; both side by side with their plots.", p, ["np", "dng"], 7, 25, 7.0, "unrelated", note, 460)


def guider_custom_sampler() -> WorkflowSpec:
    p = _base(SD15_CKPT, "a lighthouse on a rocky coast at sunset, oil painting", "a boat", 512, 512, 1)
    p["10"] = _node("DNGGuider", "Dynamic Negative Guidance Guider", model=["1", 0], positive=["2", 0],
                    negative=["3", 0], empty_conditioning=["4", 0], cfg=7.0, **DNG_DEFAULTS)
    p["11"] = _node("RandomNoise", "RandomNoise", noise_seed=99)
    p["12"] = _node("KSamplerSelect", "KSamplerSelect", sampler_name="euler_ancestral")
    p["13"] = _node("BasicScheduler", "BasicScheduler", model=["1", 0], scheduler="normal", steps=25, denoise=1.0)
    p["14"] = _node("SamplerCustomAdvanced", "SamplerCustomAdvanced", noise=["11", 0], guider=["10", 0],
                    sampler=["12", 0], sigmas=["13", 0], latent_image=["5", 0])
    p["15"] = _node("VAEDecode", "VAE Decode", samples=["14", 0], vae=["1", 2])
    p["16"] = _save(("15", 0), "dng_guider")
    p["17"] = _plot(("10", 1), ("14", 0))
    note = ("Dynamic Negative Guidance as a GUIDER for SamplerCustomAdvanced: the guider takes the model, the "
            "positive prompt, the negative prompt (the concept to remove), the empty prompt and cfg, and computes "
            "the three predictions in one batched model call. Noise, sampler and sigmas come from the usual custom "
            "sampling nodes, so any sampler and scheduler can be combined with DNG.\n\n"
            "Here: a lighthouse painting without boats. Use this guider instead of the model patch when the "
            "workflow already uses SamplerCustomAdvanced; a model patch is bypassed by other guiders.\n\n"
            + _loading_note(SD15_CKPT))
    return WorkflowSpec(
        "dng_guider_custom_sampler", "The DNG guider with SamplerCustomAdvanced (noise, sampler and sigmas from "
        "the custom sampling nodes).", p,
        blocks=[Block(0, 0, [360], [["1"], ["note:0"]]), Block(380, 0, [440], [["2"], ["3"], ["4"], ["5"]]),
                Block(840, 0, [360], [["10"], ["11"], ["12"], ["13"]]),
                Block(1200, 0, [360, 520], [["14", "15"], ["17", "16"]])],
        sizes={**_BASE_SIZES, "14": (320, 0), "16": (500, 520), "17": (340, 400)},
        notes=[Note(note, (340, 440))], thumbnail=["10", "11", "12", "13", "14", "17"])


# The reference digits model (reference_model/, shipped weights): offline, the demo `make demo` runs.
REFERENCE_DNG = DNG_DEFAULTS


def _reference_graph(negative_title: str, dng_title: str, prefix: str, dng_caption: str, plot_title: str,
                     concepts: dict | None = None, **dng_extra) -> dict:
    """The reference-model templates' graph: 64 unconditional samples with DNG removing the digit 0 (plus
    ``concepts``' nodes, placed after the negative), beside the same seed sampled plainly, with the guidance plot."""
    return {
        "1": _node("DNGReferenceModelLoader", "Load DNG Reference Model (digits)", model_name="digits8"),
        "2": _node("DNGDigitConditioning", "Empty label (unconditional)", digit="empty (unconditional)"),
        "3": _node("DNGDigitConditioning", negative_title, digit="0"),
        **(concepts or {}),
        "4": _node("DNGEmptyDigitLatent", "64 images", model=["1", 0], batch_size=64),
        "10": _node("DynamicNegativeGuidance", dng_title, model=["1", 0], empty_conditioning=["2", 0],
                    **REFERENCE_DNG, **dng_extra),
        "11": _node("KSampler", "KSampler (DNG)", model=["10", 0], seed=2024, steps=30, cfg=1.0,
                    sampler_name="euler_ancestral", scheduler="normal", positive=["2", 0], negative=["3", 0],
                    latent_image=["4", 0], denoise=1.0),
        "12": _node("DNGDigitsToImage", "Digits to Image Grid", samples=["11", 0], columns=8, scale=8),
        "13": _save(("12", 0), f"{prefix}_dng", dng_caption),
        "14": _plot(("10", 1), ("11", 0), plot_title),
        "15": _save(("14", 0), f"{prefix}_guidance_plot", "Guidance plot"),
        "21": _node("KSampler", "KSampler (plain, same seed)", model=["1", 0], seed=2024, steps=30, cfg=1.0,
                    sampler_name="euler_ancestral", scheduler="normal", positive=["2", 0], negative=["2", 0],
                    latent_image=["4", 0], denoise=1.0),
        "22": _node("DNGDigitsToImage", "Digits to Image Grid", samples=["21", 0], columns=8, scale=8),
        "23": _save(("22", 0), f"{prefix}_plain", "Plain: all digits"),
    }


def reference_demo() -> WorkflowSpec:
    p = _reference_graph("Negative = the digit to remove", "Dynamic Negative Guidance", "dng_demo", "DNG: no zeros",
                         "DNG: lambda_t and p_t per image")
    note = ("Offline demo on the pack's reference model: a small class-conditional diffusion model of 8x8 digits "
            "(scikit-learn's digits), shipped with the pack, so nothing needs downloading.\n\n"
            "64 unconditional samples (positive = the empty label) with Dynamic Negative Guidance removing the "
            "digit 0 (the KSampler's negative), next to the same seed without negative guidance. DNG tracks, per "
            "image, the probability p_t that it is becoming a 0 and scales the negative guidance with "
            "lambda_t = lambda0 p_t / (1 - p_t): images heading for a 0 are steered away, the others are left "
            "(almost) alone, so the other digits keep their proportions.\n\n"
            "Settings: the node defaults, chosen on this model (benchmarks/results/defaults_grid.md). "
            "`make demo` runs this workflow through a ComfyUI server and writes the images to demo_output/.")
    return WorkflowSpec(
        "dng_reference_demo", "Offline demo on the shipped reference digits model: DNG removes the digit 0; plain "
        "samples of the same seed beside it.", p,
        blocks=[Block(0, 0, [360], [["1"], ["note:0"]]), Block(380, 0, [400], [["2"], ["3"], ["4"]]),
                Block(800, 0, [360, 340, 320, 420], [["10", "11", "12", "13"], ["14", "21", "22", "23"],
                                                     ["15", None, None, None]])],
        sizes={"13": (400, 460), "23": (400, 460), "14": (340, 400), "15": (340, 300)},
        notes=[Note(note, (340, 420))], thumbnail=["3", "10", "11", "13", "23"])


def reference_concepts() -> WorkflowSpec:
    concepts = {
        "40": _node("DNGDigitConditioning", "Concept 2: the digit 3", digit="3"),
        "41": _node("DNGDigitConditioning", "Concept 3: the digit 5", digit="5"),
        "30": _node("DNGConcept", "DNG Concept (digit 3)", conditioning=["40", 0], lambda0=-1.0, label="digit 3"),
        "31": _node("DNGConcept", "DNG Concept (digit 5)", conditioning=["41", 0], lambda0=-1.0, label="digit 5",
                    concepts=["30", 0]),
    }
    p = _reference_graph("Negative = concept 1: the digit 0", "Dynamic Negative Guidance (3 concepts)",
                         "dng_concepts", "DNG: no 0, 3 or 5", "DNG: lambda_t and p_t per image and concept",
                         concepts, more_concepts=["31", 0])
    note = ("Several concepts at once, on the pack's reference model (8x8 digits, shipped with the pack, so "
            "nothing needs downloading): Dynamic Negative Guidance removes the digits 0, 3 and 5 from 64 "
            "unconditional samples; plain samples of the same seed beside them.\n\nThe KSampler's negative stays "
            "the first concept; each DNG Concept node adds one more (chain "
            "them into the DNG node's more_concepts). Every concept has its own posterior per image and its own "
            "lambda0 (-1: the DNG node's), and all are predicted in one batched model call. With prune_concepts on, "
            "a concept stops being predicted once its posterior has settled far below the prior for every image "
            "(hollow grey markers in the plot).\n\nSettings: the node defaults.")
    return WorkflowSpec(
        "dng_reference_concepts", "Offline, on the reference digits model: three concepts (the digits 0, 3 and 5) "
        "removed at once with DNG Concept nodes; plain samples beside.", p,
        blocks=[Block(0, 0, [360], [["1"], ["note:0"]]), Block(380, 0, [400], [["2"], ["3"], ["40"], ["41"], ["4"]]),
                Block(800, 0, [340], [["30"], ["31"]]),
                Block(1160, 0, [360, 340, 320, 420], [["10", "11", "12", "13"], ["14", "21", "22", "23"],
                                                      ["15", None, None, None]])],
        sizes={"13": (400, 460), "23": (400, 460), "14": (340, 400), "15": (340, 300)},
        notes=[Note(note, (340, 460))], thumbnail=["30", "31", "10", "11", "13", "23"])


# The text-conditioned shapes model (reference_model/shapes.py, text_network.py): offline, like the digits.
SHAPES_NP_SCALE = 3.0  # NP's scale in the composition template (benchmarks/results/composition.md)


def _shapes_case(p: dict, case: str, positive_id: str, base: int, seed: int) -> list[list[str | None]]:
    """Plain, NP and DNG on one positive (negative "3"), same seed; returns the layout rows (one column each)."""
    np_patch, dng_patch = str(base + 10), str(base + 20)
    p[np_patch] = _node("DNGNegativePrompting", f"Negative Prompting ({case})", model=["1", 0],
                        empty_conditioning=["2", 0], scale=SHAPES_NP_SCALE)
    p[dng_patch] = _node("DynamicNegativeGuidance", f"Dynamic Negative Guidance ({case})", model=["1", 0],
                         empty_conditioning=["2", 0], **DNG_DEFAULTS)
    cols = []
    for off, key, model, negative in ((0, "plain", ("1", 0), ("2", 0)), (10, "np", (np_patch, 0), ("3", 0)),
                                      (20, "dng", (dng_patch, 0), ("3", 0))):
        ks, grid, save, plot = (str(base + off + i) for i in range(1, 5))
        p[ks] = _ksampler(model, seed, 20, 3.0, title=f"KSampler ({key}, {case})", negative=negative)
        p[ks]["inputs"]["positive"] = [positive_id, 0]
        p[ks]["inputs"]["latent_image"] = ["4", 0]
        p[grid] = _node("DNGShapesToImage", "Shapes to Image Grid", samples=[ks, 0], columns=4, scale=8)
        p[save] = _save((grid, 0), f"dng_composition_{case}_{key}",
                        {"plain": "Plain (empty negative)", "np": "Negative Prompting", "dng": "DNG"}[key])
        if key != "plain":
            p[plot] = _plot((model[0], 1), (ks, 0), f"{key.upper()}: scale per step ({case})")
        cols.append([model[0] if key != "plain" else None, ks, grid, save, plot if key != "plain" else None])
    return [list(r) for r in zip(*cols)]


def reference_composition() -> WorkflowSpec:
    p = {
        "1": _node("DNGShapesModelLoader", "Load DNG Shapes Model (text reference)"),
        "2": _node("DNGShapesTextEncode", "Empty prompt (unconditional)", model=["1", 0], text=""),
        "3": _node("DNGShapesTextEncode", "Negative = the concept to remove", model=["1", 0], text="red circle"),
        "5": _node("DNGShapesTextEncode", "Positive (related): contains the concept", model=["1", 0],
                   text="red circle and blue square"),
        "6": _node("DNGShapesTextEncode", "Positive (unrelated): no red circle", model=["1", 0], text="blue square"),
        "4": _node("DNGEmptyShapesLatent", "16 images", model=["1", 0], batch_size=16),
    }
    related = _shapes_case(p, "related", "5", 100, 11)
    unrelated = _shapes_case(p, "unrelated", "6", 200, 11)
    note = ("Offline, on the pack's text-conditioned reference model (16x16 scenes of coloured shapes with captions, "
            "trained here and shipped with the pack, so nothing needs downloading). Its prompts go through one "
            "encoder and cross-attention, as in Stable Diffusion.\n\n"
            "The negative 'red circle' on two positives, each under plain sampling, Negative Prompting and Dynamic "
            "Negative Guidance from the same seed:\n\n"
            "- Related (top): 'red circle and blue square'. The concept is asked for; Negative Prompting at "
            f"scale {SHAPES_NP_SCALE:g} removes most red circles, DNG at its defaults only some (its posterior is "
            "that of the caption 'red circle', weak evidence in a two-object scene, and it rises late).\n"
            "- Unrelated (bottom): 'blue square'. Nothing to remove: DNG's p_t stays near its prior and its plot near "
            f"zero, while Negative Prompting pushes at scale {SHAPES_NP_SCALE:g} anyway.\n\n"
            "Measured figures: benchmarks/results/composition.md. Settings: the DNG node defaults; KSampler cfg 3.")
    rows = related + unrelated
    return WorkflowSpec(
        "dng_reference_composition", "Offline, on the text-conditioned shapes model: 'red circle' removed from 'red "
        "circle and blue square' and left out of 'blue square', under plain, NP and DNG with their plots.", p,
        blocks=[Block(0, 0, [360], [["1"], ["note:0"]]), Block(380, 0, [400], [["2"], ["3"], ["5"], ["6"], ["4"]]),
                Block(800, 0, [360, 360, 360], rows)],
        sizes={**{n: (340, 380) for n in p if p[n]["class_type"] in ("SaveImage", "DNGTracePlot")}},
        groups=[Group("Related: 'red circle and blue square', negative 'red circle'",
                      [n for r in related for n in r if n], GROUP_COLORS["dng"]),
                Group("Unrelated: 'blue square', negative 'red circle'", [n for r in unrelated for n in r if n],
                      GROUP_COLORS["np"])],
        notes=[Note(note, (340, 520))], thumbnail=["3", "5"] + [n for n in related[3] if n])


def specs() -> list[WorkflowSpec]:
    return [sd15_txt2img(), sdxl(), compare_methods(), unrelated_negative(), guider_custom_sampler(),
            reference_demo(), reference_concepts(), reference_composition()]


def shipped() -> dict[str, Path]:
    """{name: path} of the workflow JSON files in example_workflows/ (what the template browser lists)."""
    return {p.stem: p for p in sorted(WORKFLOWS_DIR.glob("*.json"))}


# ------------------------------------------------------------------------------------------------------------
# Workflows at test time


def swap_models(workflow: dict, mapping: dict[str, str]) -> dict:
    """A copy of a UI-format workflow with checkpoint file names replaced (widgets_values of the loaders)."""
    wf = copy.deepcopy(workflow)
    for node in wf.get("nodes", []):
        vals = node.get("widgets_values")
        if isinstance(vals, list):
            node["widgets_values"] = [mapping.get(v, v) if isinstance(v, str) else v for v in vals]
    return wf


def shrink_prompt(prompt: dict, *, steps: int = 4, size: int = 64) -> dict:
    """A copy of an API prompt made cheap for CPU tests: latents ``size`` px, ``steps`` sampler steps."""
    p = copy.deepcopy(prompt)
    for node in p.values():
        inp = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            inp["width"] = inp["height"] = size
        if node["class_type"] in ("KSampler", "DNGSampler", "BasicScheduler") and "steps" in inp:
            inp["steps"] = min(int(inp["steps"]), steps)
    return p


def widget_inputs(prompt: dict) -> dict[str, dict]:
    """{node id: {input: value}} of an API prompt's widget (non-link) inputs."""
    return {nid: {k: v for k, v in node["inputs"].items() if not isinstance(v, list)} for nid, node in prompt.items()}


def artifacts_dir() -> Path:
    """Where tests keep screenshots and images for people to look at: $DNG_TEST_ARTIFACTS or tests/artifacts/
    (git-ignored)."""
    d = Path(os.environ.get("DNG_TEST_ARTIFACTS") or REPO_ROOT / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


# ------------------------------------------------------------------------------------------------------------
# Headless chromium + the real frontend

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}

# Settings of a returning, offline user: no first-run template dialog, no release check against the internet,
# no minimap / canvas info in screenshots, and full-detail node drawing at any zoom (thumbnails).
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.VueNodes.Enabled": False,  # the default ("Nodes 2.0" is opt-in); set explicitly, settings are per server
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,
}

# Console messages of the frontend itself that page loads produce on this offline machine WITH OR WITHOUT this pack
# (ComfyUI 0.3.75 + frontend 1.32.9, 0.33.0 + 1.49.6, 0.33.0 + 1.58.1). An entry is allowed only because a page
# without the pack shows it too: tests/e2e/test_web_ui.py::test_allowed_console_errors_also_show_without_the_pack
# loads both and fails on any allowed error of the pack's page that the pack-free page does not show.
# Resource 404s only for these exact paths:
BENIGN_404_PATHS = (
    "/user.css", "/api/userdata/user.css", "/favicon.ico",  # optional user stylesheet, no favicon
    "/api/userdata?dir=workflows", "/api/userdata?dir=subgraphs",  # a new user has no saved workflows/subgraphs
    "/api/userdata/comfy.templates.json",  # ... nor saved node templates
)
# Unreachable hosts (the machine is offline): the frontend asks the registry (comfy.org) about comfy-core, and
# newer frontends' default workflow checks its model files on huggingface.co.
BENIGN_OFFLINE_HOSTS = ("comfy.org", "huggingface.co")
BENIGN_ERROR_SIGNATURES = (
    # frontend 1.32.9: the start-up race in useRenderModeSetting: it sets LiteGraph.Canvas.MinFontSizeForLOD
    # before the setting's definition is registered, and onChange() reads .id of the missing definition
    ("Cannot read properties of undefined (reading 'id')", "at onChange"),
    # frontend 1.49.6: the setting store reads app.graph before app.setup() has created it
    ("ComfyApp graph accessed before initialization",),
)


def chromium_path() -> str | None:
    p = os.environ.get("DNG_CHROMIUM") or "/usr/bin/chromium"
    return p if os.path.isfile(p) and os.access(p, os.X_OK) else None


def browser_missing_reason() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed in this venv (scripts/setup_env.sh installs it)"
    if chromium_path() is None:
        return "no chromium at /usr/bin/chromium (scripts/setup_env.sh installs Debian's chromium; or set DNG_CHROMIUM)"
    return None


class Browser:
    """One headless chromium for the whole process (playwright gives it a new empty profile); every page gets
    its own browser context, so no frontend state (the restored last workflow, local storage) leaks between
    pages."""

    _instance: "Browser | None" = None

    def __init__(self):
        from playwright.sync_api import sync_playwright

        t0 = time.perf_counter()
        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS,
                                                    headless=True)
        except BaseException:
            self._pw.stop()
            raise
        self.startup_s = time.perf_counter() - t0

    @classmethod
    def get(cls) -> "Browser":
        if cls._instance is None:
            cls._instance = cls()
            atexit.register(cls._instance.close)
        return cls._instance

    def close(self):
        for fn in (self.browser.close, self._pw.stop):
            try:
                fn()
            except Exception:  # noqa: BLE001 - already gone
                pass
        if Browser._instance is self:
            Browser._instance = None

    def open(self, server_url: str, settings: dict | None = None, timeout: float = 90.0) -> "ComfyPage":
        context = self.browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
        # a returning user has dismissed the "Introducing Nodes 2.0" banner (kept in local storage)
        context.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        try:
            return ComfyPage.open(context, server_url, settings, timeout)
        except BaseException:
            context.close()
            raise


@dataclass
class ConsoleEntry:
    kind: str  # console type ("error", "warning", ...), "pageerror" or "http"
    text: str
    url: str = ""

    def __str__(self):
        return f"[{self.kind}] {self.text}" + (f" ({self.url})" if self.url else "")

    def key(self, server_url: str) -> tuple[str, str, str]:
        """What identifies the message across servers: the server's own address (its port) is left out."""
        netloc = server_url.rstrip("/").split("://", 1)[-1]
        return self.kind, self.text.replace(netloc, "SERVER"), self.url.replace(netloc, "SERVER")


class ComfyPage:
    """A ComfyUI frontend page with its console recorded."""

    def __init__(self, page, server_url: str):
        self.page = page
        self.server_url = server_url.rstrip("/")
        self.console: list[ConsoleEntry] = []
        self.responses: list[tuple[int, str]] = []  # (status, url) of everything the page fetched
        self.load_s: float | None = None
        page.on("console", lambda m: self.console.append(
            ConsoleEntry(m.type, m.text, (m.location or {}).get("url", ""))))
        page.on("pageerror", lambda e: self.console.append(ConsoleEntry("pageerror", f"{e}\n{e.stack or ''}")))
        page.on("response", lambda r: self.responses.append((r.status, r.url)))

    @classmethod
    def open(cls, context, server_url: str, settings: dict | None = None, timeout: float = 90.0) -> "ComfyPage":
        import urllib.request

        body = json.dumps({**FRONTEND_SETTINGS, **(settings or {})}).encode()
        req = urllib.request.Request(server_url.rstrip("/") + "/api/settings", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        page = context.new_page()
        self = cls(page, server_url)
        t0 = time.perf_counter()
        page.goto(self.server_url + "/", timeout=timeout * 1000)
        # app.setup() has run (extensions registered, node defs loaded) and the websocket is connected
        page.wait_for_function(
            "() => window.app?.graph && window.app.extensionManager && window.app.vueAppReady"
            " && window.app.api?.clientId && window.app.api.socket?.readyState === 1",
            timeout=timeout * 1000)
        self.load_s = time.perf_counter() - t0
        return self

    def close(self):
        self.page.context.close()

    # -------------------------------------------------------------------------------------------- console
    def errors(self) -> list[ConsoleEntry]:
        """Console errors and uncaught exceptions, less the documented benign ones (BENIGN_*)."""
        return split_console(self.console, self.server_url)[0]

    def ignored(self) -> list[ConsoleEntry]:
        """The console errors that errors() let pass as benign."""
        return split_console(self.console, self.server_url)[1]

    # ------------------------------------------------------------------------------------------- frontend
    def evaluate(self, js: str, arg: Any = None):
        return self.page.evaluate(js, arg)

    def extension_names(self) -> list[str]:
        return self.evaluate("() => app.extensions.map(e => e.name)")

    def load_workflow(self, workflow: dict, name: str = "workflow") -> None:
        """``app.loadGraphData`` as when a user opens a workflow file or template; fails on missing node types."""
        missing = self.evaluate(
            """async ([wf, name]) => {
                 const missing = wf.nodes.map(n => n.type).filter(t => !LiteGraph.registered_node_types[t]);
                 await app.loadGraphData(wf, true, true, name, {showMissingModelsDialog: false,
                                                                 showMissingNodesDialog: false});
                 return missing;
               }""", [workflow, name])
        if missing:
            raise AssertionError(f"{name}: node types unknown to the frontend: {sorted(set(missing))}")

    def fetch_template(self, module: str, name: str) -> str:
        """The text of ``/api/workflow_templates/<module>/<name>.json``, fetched by the page as the template
        browser does."""
        return self.evaluate(
            """async ([module, name]) => {
                 const r = await fetch(app.api.apiURL(`/workflow_templates/${module}/${name}.json`));
                 if (!r.ok) throw new Error(`template ${module}/${name}: HTTP ${r.status}`);
                 return await r.text();
               }""", [module, name])

    def set_widgets(self, node_id: int | str, values: dict) -> None:
        """Set widget values of a node in the loaded graph, as a user editing them would."""
        missing = self.evaluate(
            """([id, values]) => {
                 const n = app.graph.getNodeById(Number(id));
                 if (!n) return ['<node>'];
                 const missing = [];
                 for (const [k, v] of Object.entries(values)) {
                   const w = n.widgets?.find((w) => w.name === k);
                   if (!w) { missing.push(k); continue; }
                   w.value = v;
                   w.callback?.(v);
                 }
                 app.canvas.setDirty(true, true);
                 return missing;
               }""", [node_id, values])
        if missing:
            raise AssertionError(f"node {node_id}: no widgets {missing}")

    def graph_to_prompt(self) -> dict:
        """``app.graphToPrompt()`` of the current graph: {"output": API prompt, "workflow": UI JSON}."""
        return json.loads(self.evaluate("async () => JSON.stringify(await app.graphToPrompt())"))

    def to_api(self, workflow: dict, name: str = "workflow") -> dict:
        self.load_workflow(workflow, name)
        return self.graph_to_prompt()["output"]

    def queue(self) -> str:
        """Queue the current graph from the page (``app.queuePrompt``, so the events go to this page's
        client id); returns the prompt id."""
        return self.evaluate(
            """async () => {
                 const orig = app.api.queuePrompt;
                 let response = null;
                 app.api.queuePrompt = async function (...args) {
                   response = await orig.apply(this, args);
                   return response;
                 };
                 try {
                   await app.queuePrompt(0, 1);
                 } finally {
                   app.api.queuePrompt = orig;
                 }
                 if (!response?.prompt_id) {
                   const errors = JSON.stringify(app.lastNodeErrors ?? null);
                   throw new Error('the server did not queue the prompt: ' + errors);
                 }
                 return response.prompt_id;
               }""")

    def fit_view(self):
        self.evaluate("() => app.extensionManager.command.execute('Comfy.Canvas.FitView')")
        self.page.wait_for_timeout(300)

    def hide_chrome(self):
        """Hide the DOM menus and panels over the canvas (for screenshots of the graph only)."""
        self.page.add_style_tag(content="""
            .comfyui-body-top, .comfyui-body-left, .comfyui-body-right, .comfyui-body-bottom,
            .comfyui-menu, .side-tool-bar-container, .actionbar, .actionbar-container, .graph-canvas-panel,
            .p-toast, .workflow-tabs-container, .top-menu, .splitter-overlay-root > .p-splitter-gutter,
            .selection-toolbox, .zoom-controls, .canvas-controls, .graph-canvas-menu, .p-panel,
            [class*="minimap"], [class*="breadcrumb"], nav,
            .graph-canvas-container [class*="border-l-destructive-background"],
            .graph-canvas-container [class*="bg-comfy-menu-bg"] { visibility: hidden !important; }""")


def split_console(entries: list[ConsoleEntry], server_url: str) -> tuple[list[ConsoleEntry], list[ConsoleEntry]]:
    """(errors, allowed) among the console errors and uncaught exceptions of a page of ``server_url``."""
    errors, allowed = [], []
    for e in entries:
        if e.kind not in ("error", "pageerror"):
            continue
        benign = e.kind == "error" and (
            (e.text.startswith("Failed to load resource") and _benign_resource(e.url, server_url))
            or any(all(s in e.text for s in sig) for sig in BENIGN_ERROR_SIGNATURES))
        (allowed if benign else errors).append(e)
    return errors, allowed


def _benign_resource(url: str, server_url: str) -> bool:
    from urllib.parse import urlsplit

    u, s = urlsplit(url), urlsplit(server_url)
    if u.netloc != s.netloc:
        # this machine is offline: the frontend's calls to other hosts fail to resolve
        return u.hostname is not None and any(u.hostname == h or u.hostname.endswith("." + h)
                                              for h in BENIGN_OFFLINE_HOSTS)
    path_q = u.path + (f"?{u.query}" if u.query else "")
    return any(path_q == p or (p.endswith(("workflows", "subgraphs")) and path_q.startswith(p))
               for p in BENIGN_404_PATHS)


# ------------------------------------------------------------------------------------------------------------
# Building the workflow files

_BUILD_JS = r"""
async (spec) => {
  await app.loadApiJson(spec.prompt, spec.name);
  const g = app.graph;
  const node = (id) => { const n = g.getNodeById(Number(id)); if (!n) throw new Error(`no node ${id}`); return n; };
  const notes = spec.notes.map((note) => {
    const n = LiteGraph.createNode('Note');
    n.title = note.title;
    g.add(n);
    n.widgets[0].value = note.text;
    n.color = spec.noteColor; n.bgcolor = spec.noteBgcolor;
    n.setSize(note.size);
    return n;
  });
  const item = (id) => id.startsWith('note:') ? notes[Number(id.slice(5))] : node(id);
  for (const [id, [w, h]] of Object.entries(spec.sizes)) {
    const n = node(id), min = n.computeSize();
    n.setSize([w || n.size[0], h ? Math.max(h, min[1]) : n.size[1]]);
  }
  const title = LiteGraph.NODE_TITLE_HEIGHT, gap = 40;
  for (const b of spec.blocks) {
    let y = b.y + title;
    for (const row of b.rows) {
      let x = b.x, tallest = 0;
      row.forEach((id, c) => {
        if (id) { const n = item(id); n.pos = [x, y]; tallest = Math.max(tallest, n.size[1]); }
        x += b.widths[c];
      });
      y += tallest + title + gap;
    }
  }
  for (const n of g.nodes) {
    // reproducible comparisons: the seed stays what the workflow says
    for (const w of n.widgets ?? []) if (w.name === 'control_after_generate') w.value = 'fixed';
    if (n.type === 'CheckpointLoaderSimple') {
      const m = spec.models[n.widgets[0].value];
      if (m) n.properties.models = [m];
    }
  }
  for (const gr of spec.groups) {
    const group = new LiteGraph.LGraphGroup(gr.title);
    group.color = gr.color;
    g.add(group);
    const pad = 14, members = gr.nodes.map(node);
    const x0 = Math.min(...members.map((n) => n.pos[0])), x1 = Math.max(...members.map((n) => n.pos[0] + n.size[0]));
    const y0 = Math.min(...members.map((n) => n.pos[1] - title));
    const y1 = Math.max(...members.map((n) => n.pos[1] + n.size[1]));
    group.pos = [x0 - pad, y0 - pad - group.titleHeight];
    group.size = [x1 - x0 + 2 * pad, y1 - y0 + 2 * pad + group.titleHeight];
  }
  app.canvas.setDirty(true, true);
  const wf = (await app.graphToPrompt()).workflow;
  wf.id = spec.uuid;
  // the opening view: the whole graph fitted into a 1600 x 900 canvas (deterministic, unlike the live canvas)
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of wf.nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  for (const gr of wf.groups ?? []) {
    const [x, y, w, h] = gr.bounding;
    x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
  }
  const W = 1600, H = 900, margin = 40, r3 = (v) => Math.round(v * 1000) / 1000;
  const scale = r3(Math.min(1, (W - 2 * margin) / (x1 - x0), (H - 2 * margin) / (y1 - y0)));
  wf.extra.ds = {scale, offset: [r3((W / scale - (x1 - x0)) / 2 - x0), r3((H / scale - (y1 - y0)) / 2 - y0)]};
  return JSON.stringify(wf);
}
"""


def build_workflow(page: ComfyPage, spec: WorkflowSpec, attempts: int = 3) -> dict:
    """UI-format workflow for ``spec`` from the real frontend (the graph stays loaded in the page).

    Checked: the workflow holds exactly the spec's nodes (plus its notes). On a loaded machine the frontend's
    own start-up workflow can land in the graph after ``loadApiJson`` (seen once: a default text-to-image graph
    merged into dng_guider_custom_sampler); such a build is thrown away and redone."""
    want = {str(k) for k in spec.prompt}
    got: set[str] = set()
    for _ in range(attempts):
        workflow = _build_once(page, spec)
        got = {str(n["id"]) for n in workflow["nodes"] if n["type"] != "Note"}
        if got == want:
            return workflow
        page.page.wait_for_timeout(2000)
    raise RuntimeError(f"{spec.name}: the frontend built nodes {sorted(got - want)} that the spec does not have "
                       f"(missing: {sorted(want - got)}) in {attempts} attempts")


def _build_once(page: ComfyPage, spec: WorkflowSpec) -> dict:
    arg = {"name": spec.name, "prompt": spec.prompt, "uuid": spec.uuid, "models": MODEL_SOURCES,
           "sizes": {k: list(v) for k, v in spec.sizes.items()},
           "blocks": [{"x": b.x, "y": b.y, "widths": b.widths, "rows": b.rows} for b in spec.blocks],
           "notes": [{"text": n.text, "size": list(n.size), "title": n.title} for n in spec.notes],
           "groups": [{"title": g.title, "nodes": g.nodes, "color": g.color} for g in spec.groups],
           "noteColor": NOTE_COLOR, "noteBgcolor": NOTE_BGCOLOR}
    return json.loads(page.evaluate(_BUILD_JS, arg))


_BOX_JS = r"""
async ([ids, scale]) => {
  const canvas = app.canvas, ds = canvas.ds, rect = canvas.canvas.getBoundingClientRect();
  const title = LiteGraph.NODE_TITLE_HEIGHT;
  const nodes = ids ? ids.map((id) => app.graph.getNodeById(Number(id))) : app.graph.nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  const add = (x, y, w, h) => { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w);
                                y1 = Math.max(y1, y + h); };
  for (const n of nodes) add(n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title);
  if (!ids) for (const g of app.graph.groups ?? []) add(...g._bounding);
  if (scale === 'fit') scale = Math.min(2, 0.94 * rect.width / (x1 - x0), 0.94 * rect.height / (y1 - y0));
  if (scale) {
    ds.scale = scale;
    ds.offset[0] = rect.width / scale / 2 - (x0 + x1) / 2;
    ds.offset[1] = rect.height / scale / 2 - (y0 + y1) / 2;
  } else {
    await app.extensionManager.command.execute('Comfy.Canvas.FitView');
  }
  canvas.setDirty(true, true);
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const sx = (x) => (x + ds.offset[0]) * ds.scale + rect.left, sy = (y) => (y + ds.offset[1]) * ds.scale + rect.top;
  return {x: sx(x0), y: sy(y0), width: (x1 - x0) * ds.scale, height: (y1 - y0) * ds.scale};
}
"""


def screenshot_nodes(page: ComfyPage, node_ids: list | None = None, scale: float | None = None,
                     margin: int = 16) -> bytes:
    """PNG of some nodes (default: the whole graph, groups included) with the menus hidden: centred at ``scale``
    (a number; "fit": as large as the viewport allows; None: the frontend's fit-to-view), cropped to them."""
    page.hide_chrome()
    box = page.evaluate(_BOX_JS, [node_ids, scale])
    page.page.wait_for_timeout(300)  # DOM widgets (text areas) follow the canvas transform
    vp = page.page.viewport_size
    x0, y0 = max(0, box["x"] - margin), max(0, box["y"] - margin)
    x1 = min(vp["width"], box["x"] + box["width"] + margin)
    y1 = min(vp["height"], box["y"] + box["height"] + margin)
    return page.page.screenshot(type="png", clip={"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0})


def thumbnail(page: ComfyPage, path: Path, size: int = 512, node_ids: list | None = None) -> None:
    """``<name>.jpg`` for the template browser (square cards): the given nodes (default: the whole graph) as
    large as they fit, padded to a square, ``size`` px."""
    import io

    from PIL import Image

    png = screenshot_nodes(page, node_ids, scale="fit" if node_ids else None)
    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("RGB")
        bg = im.getpixel((2, 2))
        side = max(im.width, im.height)
        square = Image.new("RGB", (side, side), bg)
        square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        path.parent.mkdir(parents=True, exist_ok=True)
        square.resize((size, size), Image.LANCZOS).save(path, "JPEG", quality=85, optimize=True)


def canonical(workflow: dict) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def generate(out_dir: Path = WORKFLOWS_DIR, names: list[str] | None = None, thumbnails: bool = True,
             log=print) -> dict[str, dict]:
    """Start a server with the pack, build every workflow in the real frontend and write ``<name>.json`` (and
    ``<name>.jpg``) into ``out_dir``. Returns {name: workflow}."""
    from .server import ComfyServer

    reason = browser_missing_reason()
    if reason:
        raise RuntimeError(reason)
    out_dir.mkdir(parents=True, exist_ok=True)
    built = {}
    with ComfyServer(checkpoint=None) as srv:
        log(f"server up in {srv.startup_s:.1f} s at {srv.url}")
        browser = Browser.get()
        for spec in specs():
            if names and spec.name not in names:
                continue
            page = browser.open(srv.url)
            try:
                wf = build_workflow(page, spec)
                (out_dir / f"{spec.name}.json").write_text(canonical(wf))
                if thumbnails:
                    thumbnail(page, out_dir / f"{spec.name}.jpg", node_ids=spec.thumbnail)
                errs = page.errors()
                if errs:
                    raise RuntimeError(f"{spec.name}: console errors while building:\n" + "\n".join(map(str, errs)))
            finally:
                page.close()
            built[spec.name] = wf
            log(f"wrote {out_dir / spec.name}.json ({len(wf['nodes'])} nodes)")
    return built


def render_thumbnails(names: list[str], log=print) -> None:
    """Thumbnails (``<name>.jpg``) for workflows already in example_workflows/, e.g. hand-made ones: each file is opened
    in the frontend as the template browser opens it and screenshotted."""
    from .host import PACK_NAME
    from .server import ComfyServer

    with ComfyServer(checkpoint=None) as srv:
        for name in names:
            page = Browser.get().open(srv.url)
            try:
                page.load_workflow(json.loads(page.fetch_template(PACK_NAME, name)), name)
                thumbnail(page, WORKFLOWS_DIR / f"{name}.jpg")
            finally:
                page.close()
            log(f"wrote {WORKFLOWS_DIR / name}.jpg")


def render_docs(out_dir: Path = REPO_ROOT / "docs", steps: int = 25, log=print) -> None:
    """docs/live_curve.png (the DNG node's live curve after a run queued from the page) and docs/trace_plot.png
    (DNG Trace Plot's image) from dng_sd15_txt2img, run on the tiny random-weight SD1.5 checkpoint at 64 px:
    they show what the pack draws, not what DNG does with a trained model."""
    import random as _random

    from .host import CHECKPOINT_NAME, PACK_NAME
    from .server import ComfyServer

    out_dir.mkdir(parents=True, exist_ok=True)
    with ComfyServer() as srv:
        page = Browser.get().open(srv.url)
        try:
            wf = json.loads(page.fetch_template(PACK_NAME, "dng_sd15_txt2img"))
            page.load_workflow(swap_models(wf, {SD15_CKPT: CHECKPOINT_NAME}), "dng_sd15_txt2img")
            ids = {n["type"]: n["id"] for n in wf["nodes"]}
            page.set_widgets(ids["EmptyLatentImage"], {"width": 64, "height": 64})
            page.set_widgets(ids["KSampler"], {"steps": steps, "seed": _random.Random(0).randrange(2**32)})
            entry = srv.wait(page.queue(), timeout=600)
            dng = ids["DynamicNegativeGuidance"]
            page.page.wait_for_function("([id, n]) => window.__DNG_LIVE__?.drawn?.[id]?.steps === n",
                                        arg=[dng, steps], timeout=30_000)
            (out_dir / "live_curve.png").write_bytes(screenshot_nodes(page, [dng], scale=1.6))
            (plot,) = entry["outputs"][str(ids["DNGTracePlot"])]["images"]
            (out_dir / "trace_plot.png").write_bytes(srv.view(plot))
        finally:
            page.close()
    log(f"wrote {out_dir / 'live_curve.png'} and {out_dir / 'trace_plot.png'}")


def render_reference_docs(out_dir: Path = REPO_ROOT / "docs", log=print) -> None:
    """docs/reference_removal.png (plain samples beside DNG's, same seed) and docs/reference_trace.png (DNG Trace
    Plot) from dng_reference_demo as shipped: the trained reference digits model, the node defaults, through a
    real server. What DNG does with a trained model, unlike render_docs' random-weight pictures."""
    import io as _io

    from PIL import Image, ImageDraw

    from .server import ComfyServer

    spec = reference_demo()
    prompt = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in spec.prompt.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    with ComfyServer(checkpoint=None) as srv:
        entry = srv.wait(srv.queue(prompt), timeout=600)
        images = {nid: srv.view(entry["outputs"][nid]["images"][0]) for nid in ("13", "23", "15")}
    plain, dng = (Image.open(_io.BytesIO(images[n])).convert("RGB") for n in ("23", "13"))
    gap, head = 16, 28
    canvas = Image.new("RGB", (plain.width + dng.width + gap, max(plain.height, dng.height) + head), "white")
    canvas.paste(plain, (0, head))
    canvas.paste(dng, (plain.width + gap, head))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 8), "plain sampling (no negative guidance)", fill="black")
    draw.text((plain.width + gap + 4, 8), "DNG removing the digit 0, same seed", fill="black")
    canvas.save(out_dir / "reference_removal.png")
    (out_dir / "reference_trace.png").write_bytes(images["15"])
    log(f"wrote {out_dir / 'reference_removal.png'} and {out_dir / 'reference_trace.png'}")


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="only these workflows")
    ap.add_argument("--check", action="store_true",
                    help="build into a temporary folder and compare the JSON with example_workflows/ (exit 1 if different)")
    ap.add_argument("--no-thumbnails", action="store_true")
    ap.add_argument("--thumbnails-only", action="store_true",
                    help="only (re)write <name>.jpg for the named workflows in example_workflows/ (hand-made ones too)")
    ap.add_argument("--docs", action="store_true",
                    help="render docs/live_curve.png and docs/trace_plot.png (tiny checkpoint), and "
                         "docs/reference_removal.png, reference_trace.png (trained reference model) instead")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if a.docs:
        render_docs()
        render_reference_docs()
        return 0
    if a.thumbnails_only:
        render_thumbnails(a.names or sorted(shipped()))
        return 0
    if a.check:
        tmp = Path(tempfile.mkdtemp(prefix="dng_workflows_"))
        try:
            built = generate(tmp, a.names or None, thumbnails=False)
            stale = [n for n in built if not (WORKFLOWS_DIR / f"{n}.json").is_file()
                     or (WORKFLOWS_DIR / f"{n}.json").read_text() != (tmp / f"{n}.json").read_text()]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print("out of date: " + ", ".join(stale) if stale else "example_workflows/ is up to date")
        return 1 if stale else 0
    generate(WORKFLOWS_DIR, a.names or None, thumbnails=not a.no_thumbnails)
    return 0


if __name__ == "__main__":
    sys.exit(main())
