"""The text-conditioned reference denoiser: a prompt encoder and a small UNet with cross-attention (eps, DDPM).

    encoder = PromptEncoder(cfg); context = encoder(tokens [B, L])         # [B, L, context_dim], like CLIP's output
    eps = unet(x_vp [B, 3, S, S], t [B] float in [0, 999], context)        # like SD's UNet

Every prompt, the empty one included, goes through the same encoder (word + position embeddings, a small
pre-norm transformer), and the UNet sees it the way Stable Diffusion's does: cross-attention from the image
features to all ``CONTEXT_LENGTH`` token vectors (padding included, as SD attends to CLIP's padded 77 tokens)
at the two coarse resolutions and the bottleneck, plus a FiLM scale/shift from the mean token vector added to
the timestep embedding in every residual block. So two prompts' predictions differ from the empty prompt's in a
shared way (there is a prompt, there are objects) as well as in their own - the overlap the digit models lack.

The residual blocks are ``reference_model.network.ResBlock``; the config is a dataclass stored in the
safetensors metadata, so :func:`load_text_model` rebuilds both networks from the file alone. Pure torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .network import ResBlock, _load, _save, config_from_json, timestep_embedding
from .schedule import SAMPLING_SETTINGS
from .shapes import CONTEXT_LENGTH, IMAGE_SIZE, VOCAB, tokenize_batch

TEXT_MODEL_FORMAT = "dng-reference-text-unet/1"


@dataclass
class TextUNetConfig:
    image_size: int = IMAGE_SIZE
    in_channels: int = 3
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    emb_dim: int = 128
    groups: int = 8
    #: levels (0 = full resolution) whose blocks are followed by cross-attention; the bottleneck always has one
    attention_levels: tuple[int, ...] = (1, 2)
    heads: int = 4
    vocab_size: int = len(VOCAB)
    context_length: int = CONTEXT_LENGTH
    context_dim: int = 64
    encoder_layers: int = 2
    encoder_heads: int = 4
    prediction: str = "eps"
    sampling_settings: dict[str, Any] = field(default_factory=lambda: dict(SAMPLING_SETTINGS))
    dataset: str = "shapes16"
    data_range: tuple[float, float] = (-1.0, 1.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, s: str | dict) -> "TextUNetConfig":
        return config_from_json(cls, s, ("channel_mults", "attention_levels", "data_range"))


class PromptEncoder(nn.Module):
    """Token ids ``[B, L]`` -> token vectors ``[B, L, context_dim]`` (word + learned position embedding, a pre-norm
    transformer encoder, a final LayerNorm). No padding mask: padding positions are outputs too, as in CLIP."""

    def __init__(self, config: TextUNetConfig):
        super().__init__()
        c = config
        self.tokens = nn.Embedding(c.vocab_size, c.context_dim)
        self.positions = nn.Parameter(torch.randn(c.context_length, c.context_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(c.context_dim, c.encoder_heads, 2 * c.context_dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, c.encoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.context_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(self.tokens(tokens) + self.positions[: tokens.shape[1]]))

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> context ``[B, L, context_dim]`` (float32, eval mode)."""
        device = self.positions.device
        return self(tokenize_batch(texts).to(device)).float()


class CrossAttention(nn.Module):
    """Pre-norm multi-head attention from image positions to the token vectors; zero-initialised output."""

    def __init__(self, channels: int, context_dim: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.q = nn.Linear(channels, channels, bias=False)
        self.kv = nn.Linear(context_dim, 2 * channels, bias=False)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q(self.norm(x).flatten(2).transpose(1, 2))  # [B, HW, C]
        k, v = self.kv(context).chunk(2, dim=-1)  # [B, L, C]
        split = lambda t: t.reshape(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(q), split(k), split(v))  # [B, heads, HW, C/heads]
        a = a.transpose(1, 2).reshape(b, h * w, c)
        return x + self.out(a).transpose(1, 2).reshape(b, c, h, w)


class TextUNet(nn.Module):
    """``forward(x [B, 3, S, S], t [B], context [B, L, D]) -> eps``; the layout of ``network.TinyUNet`` with
    cross-attention after the blocks of ``attention_levels`` and in the bottleneck, and FiLM from the mean token."""

    def __init__(self, config: TextUNetConfig):
        super().__init__()
        self.config = c = config
        chs = [c.base_channels * m for m in c.channel_mults]
        self.time_mlp = nn.Sequential(nn.Linear(c.base_channels, c.emb_dim), nn.SiLU(), nn.Linear(c.emb_dim, c.emb_dim))
        self.context_film = nn.Linear(c.context_dim, c.emb_dim)
        self.stem = nn.Conv2d(c.in_channels, chs[0], 3, padding=1)
        attn = lambda ch: CrossAttention(ch, c.context_dim, c.heads, c.groups)  # noqa: E731

        self.down = nn.ModuleList()
        skip_chs = [chs[0]]
        ch = chs[0]
        for lvl, out_ch in enumerate(chs):
            for _ in range(c.num_res_blocks):
                self.down.append(ResBlock(ch, out_ch, c.emb_dim, c.groups, 0.0))
                ch = out_ch
                if lvl in c.attention_levels:
                    self.down.append(attn(ch))
                skip_chs.append(ch)
            if lvl < len(chs) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_chs.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, c.emb_dim, c.groups, 0.0), attn(ch),
                                  ResBlock(ch, ch, c.emb_dim, c.groups, 0.0)])
        self.up = nn.ModuleList()
        for lvl in reversed(range(len(chs))):
            out_ch = chs[lvl]
            for _ in range(c.num_res_blocks + 1):
                self.up.append(ResBlock(ch + skip_chs.pop(), out_ch, c.emb_dim, c.groups, 0.0))
                ch = out_ch
                if lvl in c.attention_levels:
                    self.up.append(attn(ch))
            if lvl > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
        assert not skip_chs
        self.out_norm = nn.GroupNorm(min(c.groups, ch), ch)
        self.out_conv = nn.Conv2d(ch, c.in_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def _run_layer(self, m: nn.Module, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if isinstance(m, ResBlock):
            return m(h, emb)
        if isinstance(m, CrossAttention):
            return m(h, context)
        return m(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device).float().reshape(-1)
        if t.numel() == 1:
            t = t.expand(b)
        context = context.to(x.dtype)
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels)) + self.context_film(context.mean(1))
        emb = F.silu(emb)
        h = self.stem(x)
        hs = [h]
        for m in self.down:
            h = self._run_layer(m, h, emb, context)
            if not isinstance(m, CrossAttention):
                hs.append(h)
            else:
                hs[-1] = h
        for m in self.mid:
            h = self._run_layer(m, h, emb, context)
        for m in self.up:
            if isinstance(m, ResBlock):
                h = m(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = self._run_layer(m, h, emb, context)
        return self.out_conv(F.silu(self.out_norm(h)))


class TextDenoiser(nn.Module):
    """Encoder + UNet in one module (what training optimises and the file stores): ``(x, t, tokens) -> eps``."""

    def __init__(self, config: TextUNetConfig):
        super().__init__()
        self.config = config
        self.encoder = PromptEncoder(config)
        self.unet = TextUNet(config)

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, self.encoder(tokens))


def save_text_model(net: TextDenoiser, path: str | Path, dtype: torch.dtype = torch.float16,
                    extra_metadata: dict[str, Any] | None = None) -> None:
    """Weights (fp16 by default: the shipped file stays under 5 MB) + ``{"format", "config", ...extra}`` metadata."""
    meta = {"format": TEXT_MODEL_FORMAT, "config": net.config.to_json()}
    for k, v in (extra_metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    _save(net, meta, path, dtype)


def load_text_model(path: str | Path, device: str | torch.device = "cpu") -> TextDenoiser:
    """Rebuild the :class:`TextDenoiser` from a safetensors file alone; eval mode, float32."""
    sd, meta = _load(path)
    if meta.get("format") != TEXT_MODEL_FORMAT:
        raise ValueError(f"{path}: not a {TEXT_MODEL_FORMAT} file (format={meta.get('format')!r})")
    net = TextDenoiser(TextUNetConfig.from_json(meta["config"]))
    net.load_state_dict(sd)
    return net.to(device).eval()
