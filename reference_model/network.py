"""A tiny class-conditional UNet (eps-prediction, DDPM) for the pack's reference digit models.

``forward(x [B, C, H, W], t [B] float in [0, 999], labels [B] long) -> eps [B, C, H, W]``

``x`` is the variance-preserving DDPM state ``sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (what ComfyUI's EPS model
sampling feeds a model), ``t`` a possibly fractional timestep, ``labels`` 0..num_classes-1 for the classes and
``num_classes`` (10 for digits) for the NULL / unconditional label. One network thus gives both the unconditional
prediction and the per-class ones (trained with label dropout).

Architecture: conv stem; per resolution ``num_res_blocks`` residual blocks (GroupNorm -> SiLU -> conv, the summed
time + label embedding applied as a GroupNorm scale/shift), a strided-conv downsample between resolutions; two
blocks at the bottom; the mirrored up path with skip concatenation and nearest-neighbour upsampling; a zero-init
output conv. The config is a dataclass serialised into the safetensors metadata, so :func:`load_denoiser` rebuilds
the network from the file alone. Pure torch: never imports ComfyUI.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .schedule import SAMPLING_SETTINGS

DENOISER_FORMAT = "dng-reference-unet/1"


@dataclass
class UNetConfig:
    image_size: int = 8
    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    num_classes: int = 10  # label ``num_classes`` is the NULL (unconditional) label
    emb_dim: int = 128
    groups: int = 8
    dropout: float = 0.0
    prediction: str = "eps"
    sampling_settings: dict[str, Any] = field(default_factory=lambda: dict(SAMPLING_SETTINGS))
    dataset: str = ""
    data_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str | dict) -> "UNetConfig":
        return config_from_json(cls, s, ("channel_mults", "data_range"))


def config_from_json(cls: type, s: str | dict, tuple_keys: tuple[str, ...]) -> Any:
    """A config dataclass from its JSON (or dict): unknown keys dropped (older/newer files), ``tuple_keys`` back to
    tuples (JSON has only lists)."""
    d = json.loads(s) if isinstance(s, str) else dict(s)
    known = {f.name for f in fields(cls)}
    d = {k: tuple(v) if k in tuple_keys else v for k, v in d.items() if k in known}
    return cls(**d)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a float timestep ``t [B]`` -> ``[B, dim]`` (fractional t is fine)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(min(groups, out_ch), out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class TinyUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        chs = [c.base_channels * m for m in c.channel_mults]
        self.time_mlp = nn.Sequential(
            nn.Linear(c.base_channels, c.emb_dim), nn.SiLU(), nn.Linear(c.emb_dim, c.emb_dim)
        )
        self.label_emb = nn.Embedding(c.num_classes + 1, c.emb_dim)
        self.stem = nn.Conv2d(c.in_channels, chs[0], 3, padding=1)

        self.down = nn.ModuleList()
        skip_chs = [chs[0]]
        ch = chs[0]
        for lvl, out_ch in enumerate(chs):
            for _ in range(c.num_res_blocks):
                self.down.append(ResBlock(ch, out_ch, c.emb_dim, c.groups, c.dropout))
                ch = out_ch
                skip_chs.append(ch)
            if lvl < len(chs) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chs.append(ch)

        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, c.emb_dim, c.groups, c.dropout), ResBlock(ch, ch, c.emb_dim, c.groups, c.dropout)]
        )

        self.up = nn.ModuleList()
        for lvl in reversed(range(len(chs))):
            out_ch = chs[lvl]
            for _ in range(c.num_res_blocks + 1):
                self.up.append(ResBlock(ch + skip_chs.pop(), out_ch, c.emb_dim, c.groups, c.dropout))
                ch = out_ch
            if lvl > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
        assert not skip_chs
        self.out_norm = nn.GroupNorm(min(c.groups, ch), ch)
        self.out_conv = nn.Conv2d(ch, c.in_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device).float().reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        labels = torch.as_tensor(labels, device=x.device).long().reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(b)
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels)) + self.label_emb(labels)
        emb = F.silu(emb)

        h = self.stem(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        for m in self.mid:
            h = m(h, emb)
        for m in self.up:
            if isinstance(m, ResBlock):
                h = m(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = m(h)
        return self.out_conv(F.silu(self.out_norm(h)))


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _save(net: nn.Module, metadata: dict[str, str], path: str | Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in net.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=metadata)


def _load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = dict(f.metadata() or {})
        sd = {k: f.get_tensor(k).float() for k in f.keys()}
    return sd, meta


def save_denoiser(net: TinyUNet, config: UNetConfig, path: str | Path, dtype: torch.dtype = torch.float32,
                  extra_metadata: dict[str, Any] | None = None) -> None:
    """Write the weights plus ``{"format", "config" (json), ...extra}`` metadata to a safetensors file."""
    meta = {"format": DENOISER_FORMAT, "config": config.to_json()}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    _save(net, meta, path, dtype)


def load_denoiser(path: str | Path, device: str | torch.device = "cpu") -> tuple[TinyUNet, UNetConfig]:
    """Rebuild a :class:`TinyUNet` from a safetensors file alone; returned in eval mode, float32."""
    sd, meta = _load(path)
    if meta.get("format") != DENOISER_FORMAT:
        raise ValueError(f"{path}: not a {DENOISER_FORMAT} file (format={meta.get('format')!r})")
    config = UNetConfig.from_json(meta["config"])
    net = TinyUNet(config)
    net.load_state_dict(sd)
    return net.to(device).eval(), config


def read_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})
