"""A small CNN digit classifier, trained separately from the denoiser, used to score samples.

``forward(x [B, 1, S, S] in [-1, 1]) -> logits [B, 10]``; ``features(x) -> [B, feat_dim]`` penultimate activations
(for a Frechet distance between sample sets). Stages of two 3x3 conv + GroupNorm + ReLU, 2x2 max-pool between
stages, then flatten -> Linear(feat_dim) -> ReLU (= features) -> dropout -> Linear(10). Pure torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .network import _load, _save

CLASSIFIER_FORMAT = "dng-reference-classifier/1"


@dataclass
class ClassifierConfig:
    image_size: int = 8
    in_channels: int = 1
    channels: tuple[int, ...] = (32, 64)
    feat_dim: int = 128
    num_classes: int = 10
    dropout: float = 0.3
    groups: int = 8
    dataset: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str | dict) -> "ClassifierConfig":
        d = json.loads(s) if isinstance(s, str) else dict(s)
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return cls(**d)


class DigitClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c = config
        layers: list[nn.Module] = []
        ch = c.in_channels
        size = c.image_size
        for i, out in enumerate(c.channels):
            for _ in range(2):
                layers += [nn.Conv2d(ch, out, 3, padding=1), nn.GroupNorm(min(c.groups, out), out), nn.ReLU()]
                ch = out
            if i < len(c.channels) - 1:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.body = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(ch * size * size, c.feat_dim), nn.ReLU())
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.feat_dim, c.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """argmax labels, batched, in eval mode (restores the previous mode)."""
        was = self.training
        self.eval()
        out = torch.cat([self(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """``features`` batched, in eval mode."""
        was = self.training
        self.eval()
        out = torch.cat([self.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        self.train(was)
        return out


def save_classifier(net: DigitClassifier, config: ClassifierConfig, path: str | Path,
                    dtype: torch.dtype = torch.float32, extra_metadata: dict[str, Any] | None = None) -> None:
    meta = {"format": CLASSIFIER_FORMAT, "config": config.to_json()}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    _save(net, meta, path, dtype)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[DigitClassifier, ClassifierConfig]:
    sd, meta = _load(path)
    if meta.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path}: not a {CLASSIFIER_FORMAT} file (format={meta.get('format')!r})")
    config = ClassifierConfig.from_json(meta["config"])
    net = DigitClassifier(config)
    net.load_state_dict(sd)
    return net.to(device).eval(), config
