"""Reference class-conditional pixel-space digit diffusion models for the DNG class-removal benchmark.

Pure torch (+ safetensors); never imports ComfyUI. See reference_model/weights/README.md.

    net, cfg = load_denoiser(weights_path("digits8_unet"))         # eps = net(x_vp, t_float, labels); label 10 = NULL
    clf, ccfg = load_classifier(weights_path("digits8_classifier"))  # logits = clf(x); feats = clf.features(x)
"""

from __future__ import annotations

from pathlib import Path

from .classifier import ClassifierConfig, DigitClassifier, load_classifier, save_classifier
from .network import TinyUNet, UNetConfig, load_denoiser, save_denoiser
from .schedule import SAMPLING_SETTINGS

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
NULL_LABEL = 10


def weights_path(name: str) -> Path:
    """``weights_path("digits8_unet")`` -> .../reference_model/weights/digits8_unet.safetensors"""
    return WEIGHTS_DIR / f"{name}.safetensors"


__all__ = [
    "ClassifierConfig", "DigitClassifier", "NULL_LABEL", "SAMPLING_SETTINGS", "TinyUNet", "UNetConfig", "WEIGHTS_DIR",
    "load_classifier", "load_denoiser", "save_classifier", "save_denoiser", "weights_path",
]
