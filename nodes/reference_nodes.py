"""The pack's reference model (reference_model/: a small class-conditional digit diffusion model) as ComfyUI
nodes, for the offline demo and the class-removal benchmark: a MODEL loader, digit CONDITIONING, an empty
LATENT of its shape and a LATENT -> IMAGE grid. The model is pixel-space, so its LATENT is the image."""

from __future__ import annotations

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base
from comfy_api.latest import io

from ..reference_model import NULL_LABEL, WEIGHTS_DIR, TinyUNet, UNetConfig, load_denoiser
from .schema import REFERENCE_CATEGORY as CATEGORY
EMPTY_LABEL = "empty (unconditional)"
_NOTE = " Reference model of the DNG pack for the offline demo and the class-removal benchmark."


def available_models() -> list[str]:
    return sorted(p.name[: -len("_unet.safetensors")] for p in WEIGHTS_DIR.glob("*_unet.safetensors"))


class DigitsLatentFormat(comfy.latent_formats.LatentFormat):
    """Pixel space, one channel, data in [-1, 1]: the latent is the image."""

    latent_channels = 1
    scale_factor = 1.0


class ReferenceDigitsConfig(comfy.supported_models_base.BASE):
    latent_format = DigitsLatentFormat
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float32]


class DigitsDenoiser(torch.nn.Module):
    """The ``diffusion_model`` a BaseModel calls: (x_vp, t, context = one-hot label [B, 1, 11]) -> eps."""

    def __init__(self, net_config: str, device=None, operations=None, **_):
        super().__init__()
        self.config = UNetConfig.from_json(net_config)
        self.net = TinyUNet(self.config)
        self.dtype = torch.float32

    def forward(self, x, timesteps, context=None, **kwargs):
        if context is None:
            labels = torch.full((x.shape[0],), self.config.null_label, dtype=torch.long, device=x.device)
        else:
            labels = context[:, 0, :].argmax(dim=-1)
        return self.net(x.float(), timesteps.float(), labels)


class ReferenceDigitsModel(comfy.model_base.BaseModel):
    """eps-prediction with ComfyUI's discrete (DDPM linear beta) model sampling, like SD1.x."""

    def __init__(self, model_config: ReferenceDigitsConfig, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device, unet_model=DigitsDenoiser)


def load_reference_model(name: str) -> comfy.model_patcher.ModelPatcher:
    path = WEIGHTS_DIR / f"{name}_unet.safetensors"
    if not path.is_file():
        raise ValueError(f"model must be one of {available_models()}, got {name!r}")
    net, net_config = load_denoiser(path)
    config = ReferenceDigitsConfig({"net_config": net_config.to_json()})
    config.sampling_settings = dict(net_config.sampling_settings)
    offload = comfy.model_management.unet_offload_device()
    model = ReferenceDigitsModel(config, device=offload)
    model.diffusion_model.net.load_state_dict(net.state_dict())
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=offload)


def digit_conditioning(label: int) -> list:
    onehot = torch.zeros(1, 1, NULL_LABEL + 1)
    onehot[0, 0, label] = 1.0
    return [[onehot, {}]]


def _net_config(model) -> UNetConfig:
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(getattr(inner, "config", None), UNetConfig):
        raise ValueError("model must be the DNG reference digits model (from 'Load DNG Reference Model')")
    return inner.config


class LoadReferenceModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DNGReferenceModelLoader",
            display_name="Load DNG Reference Model (digits)",
            category=CATEGORY,
            description="Loads a small class-conditional digit diffusion model shipped with the pack (no "
                        "download)." + _NOTE,
            inputs=[io.Combo.Input("model_name", options=available_models() or ["digits8"],
                                   default="digits8" if "digits8" in available_models() else None,
                                   tooltip="digits8: 8x8 digits (scikit-learn), fast. mnist16: 16x16 MNIST." + _NOTE)],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="An eps-prediction model with the DDPM linear "
                                     "schedule; works with every sampler and the DNG nodes.")],
        )

    @classmethod
    def execute(cls, model_name) -> io.NodeOutput:
        return io.NodeOutput(load_reference_model(model_name))


class DigitConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DNGDigitConditioning",
            display_name="Digit Conditioning (reference model)",
            category=CATEGORY,
            description="CONDITIONING for one digit, or the empty (unconditional) label, of the reference "
                        "model." + _NOTE,
            inputs=[io.Combo.Input("digit", options=[str(d) for d in range(10)] + [EMPTY_LABEL], default="0",
                                   tooltip="The digit to condition on; 'empty' is the unconditional prompt "
                                           "(use it as DNG's empty_conditioning).")],
            outputs=[io.Conditioning.Output(display_name="CONDITIONING", tooltip="Only for the reference model.")],
        )

    @classmethod
    def execute(cls, digit) -> io.NodeOutput:
        label = NULL_LABEL if digit == EMPTY_LABEL else int(digit)
        return io.NodeOutput(digit_conditioning(label))


class EmptyDigitLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DNGEmptyDigitLatent",
            display_name="Empty Digit Latent (reference model)",
            category=CATEGORY,
            description="An empty LATENT of the reference model's size (its latent is the image)." + _NOTE,
            inputs=[
                io.Model.Input("model", tooltip="The reference model (sets the image size)."),
                io.Int.Input("batch_size", default=16, min=1, max=4096, tooltip="Number of images."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="Zeros of shape [batch, 1, size, size].")],
        )

    @classmethod
    def execute(cls, model, batch_size) -> io.NodeOutput:
        size = _net_config(model).image_size
        return io.NodeOutput({"samples": torch.zeros(batch_size, 1, size, size)})


class DigitsToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DNGDigitsToImage",
            display_name="Digits to Image Grid (reference model)",
            category=CATEGORY,
            description="Turns the reference model's LATENT (pixel space, [-1, 1]) into one IMAGE grid." + _NOTE,
            inputs=[
                io.Latent.Input("samples", tooltip="LATENT from a sampler using the reference model."),
                io.Int.Input("columns", default=8, min=1, max=256, tooltip="Images per row of the grid."),
                io.Int.Input("scale", default=8, min=1, max=64, tooltip="Nearest-neighbour upscaling factor."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The grid, white digits on black.")],
        )

    @classmethod
    def execute(cls, samples, columns, scale) -> io.NodeOutput:
        x = samples["samples"].float()
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"samples must be the reference model's LATENT [B, 1, H, W], got {tuple(x.shape)}")
        # A one-pixel grey frame per cell: the digits touch their cell's edges and would run together.
        x = torch.nn.functional.pad(x.clamp(-1, 1), (1, 1, 1, 1), value=-0.5)
        b, _, h, w = x.shape
        rows = -(-b // columns)
        pad = torch.full((rows * columns - b, 1, h, w), -0.5)
        grid = torch.cat([x, pad]).reshape(rows, columns, h, w).permute(0, 2, 1, 3).reshape(rows * h, columns * w)
        grid = ((grid + 1) / 2).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        return io.NodeOutput(grid[None, :, :, None].expand(-1, -1, -1, 3).contiguous())


REFERENCE_NODES = [LoadReferenceModel, DigitConditioning, EmptyDigitLatent, DigitsToImage]
