"""The pack's reference models as ComfyUI nodes, for the offline demos and the benchmarks.

* Digits (reference_model/: small class-conditional digit diffusion models): a MODEL loader, digit CONDITIONING,
  an empty LATENT of its shape and a LATENT -> IMAGE grid.
* Shapes (reference_model/text_network.py: a text-conditioned model of coloured-shape scenes): a MODEL loader, a
  text encoder node taking a prompt such as "red circle, blue square", an empty LATENT and an RGB image grid.

Both are pixel-space, so their LATENT is the image."""

from __future__ import annotations

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base
from comfy_api.latest import io

from ..reference_model import NULL_LABEL, WEIGHTS_DIR, TinyUNet, UNetConfig, load_denoiser
from ..reference_model import shapes
from ..reference_model.text_network import PromptEncoder, TextUNet, TextUNetConfig, load_text_model
from .schema import REFERENCE_CATEGORY as CATEGORY
EMPTY_LABEL = "empty (unconditional)"
_NOTE = " Reference model of the DNG pack for the offline demo and the class-removal benchmark."


SHAPES_MODEL = "shapes16"
_SHAPES_NOTE = " Text-conditioned reference model of the DNG pack (coloured shapes, 16x16 RGB)."


def available_models() -> list[str]:
    """The digit models (the shapes model has its own loader)."""
    return sorted(p.name[: -len("_unet.safetensors")] for p in WEIGHTS_DIR.glob("*_unet.safetensors")
                  if not p.name.startswith(SHAPES_MODEL))


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
        return io.NodeOutput(image_grid(samples["samples"], 1, columns, scale, "the digits model's"))


def image_grid(x: torch.Tensor, channels: int, columns: int, scale: int, whose: str) -> torch.Tensor:
    """Pixel-space LATENT [B, channels, H, W] in [-1, 1] -> one IMAGE [1, rows*(H+2)*scale, ..., 3]."""
    x = x.float()
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"samples must be {whose} LATENT [B, {channels}, H, W], got {tuple(x.shape)}")
    # A one-pixel grey frame per cell: the pictures touch their cell's edges and would run together.
    x = torch.nn.functional.pad(x.clamp(-1, 1), (1, 1, 1, 1), value=-0.5)
    b, c, h, w = x.shape
    rows = -(-b // columns)
    pad = torch.full((rows * columns - b, c, h, w), -0.5)
    grid = torch.cat([x, pad]).reshape(rows, columns, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, columns * w, c)
    grid = ((grid + 1) / 2).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return grid[None].expand(-1, -1, -1, 3).contiguous()


# ------------------------------------------------------------------------------------------------------------
# The text-conditioned shapes model


class ShapesLatentFormat(comfy.latent_formats.LatentFormat):
    """Pixel space, RGB, data in [-1, 1]: the latent is the image."""

    latent_channels = 3
    scale_factor = 1.0


class ReferenceShapesConfig(comfy.supported_models_base.BASE):
    latent_format = ShapesLatentFormat
    memory_usage_factor = 1.0
    supported_inference_dtypes = [torch.float32]


class ShapesDenoiser(torch.nn.Module):
    """The ``diffusion_model`` a BaseModel calls: (x_vp, t, context = token vectors [B, L, D]) -> eps. Holds the
    prompt encoder too, which the text node runs (as CLIPTextEncode runs CLIP); no context = the empty prompt."""

    def __init__(self, net_config: str, device=None, operations=None, **_):
        super().__init__()
        self.config = TextUNetConfig.from_json(net_config)
        self.encoder = PromptEncoder(self.config)
        self.unet = TextUNet(self.config)
        self.dtype = torch.float32

    def forward(self, x, timesteps, context=None, **kwargs):
        if context is None:
            context = self.encoder.encode([""]).to(x.device).expand(x.shape[0], -1, -1)
        return self.unet(x.float(), timesteps.float(), context.float())


class ReferenceShapesModel(comfy.model_base.BaseModel):
    """eps-prediction with ComfyUI's discrete (DDPM linear beta) model sampling, like SD1.x."""

    def __init__(self, model_config: ReferenceShapesConfig, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device, unet_model=ShapesDenoiser)


def load_shapes_model() -> comfy.model_patcher.ModelPatcher:
    path = WEIGHTS_DIR / f"{SHAPES_MODEL}_unet.safetensors"
    if not path.is_file():
        raise ValueError(f"the shapes model's weights are missing: {path}")
    net = load_text_model(path)
    config = ReferenceShapesConfig({"net_config": net.config.to_json()})
    config.sampling_settings = dict(net.config.sampling_settings)
    offload = comfy.model_management.unet_offload_device()
    model = ReferenceShapesModel(config, device=offload)
    inner = model.diffusion_model
    inner.encoder.load_state_dict(net.encoder.state_dict())
    inner.unet.load_state_dict(net.unet.state_dict())
    inner.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=offload)


def _shapes_denoiser(model) -> ShapesDenoiser:
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(inner, ShapesDenoiser):
        raise ValueError("model must be the DNG shapes model (from 'Load DNG Shapes Model')")
    return inner


def shapes_conditioning(model, text: str) -> list:
    """CONDITIONING of one prompt: the encoder's token vectors [1, L, D] as the cross-attention context."""
    encoder = _shapes_denoiser(model).encoder
    with torch.no_grad():
        context = encoder(shapes.tokenize(text)[None].to(encoder.positions.device)).float().cpu()
    return [[context, {}]]


class LoadShapesModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DNGShapesModelLoader",
            display_name="Load DNG Shapes Model (text reference)",
            category=CATEGORY,
            description="Loads the pack's small text-conditioned model of coloured-shape scenes (no download): a "
                        "prompt encoder and a cross-attention UNet, as in Stable Diffusion." + _SHAPES_NOTE,
            inputs=[],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="An eps-prediction model with the DDPM linear "
                                     "schedule; works with every sampler and the DNG nodes. Prompts come from "
                                     "'Shapes Text Encode'.")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(load_shapes_model())


class ShapesTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DNGShapesTextEncode",
            display_name="Shapes Text Encode (reference model)",
            category=CATEGORY,
            description="Encodes a prompt for the shapes model, like CLIP Text Encode for Stable Diffusion. Words: "
                        f"the colours {', '.join(shapes.COLOURS)}, the shapes {', '.join(shapes.SHAPES)}, and 'and' "
                        "or commas between objects." + _SHAPES_NOTE,
            inputs=[
                io.Model.Input("model", tooltip="The shapes model (its prompt encoder)."),
                io.String.Input("text", default="red circle, blue square",
                                tooltip="Up to three objects, each a colour and/or a shape, e.g. 'red circle, "
                                        "blue square' or 'red'. Leave empty for the empty prompt (use it as DNG's "
                                        "empty_conditioning and as the plain run's negative)."),
            ],
            outputs=[io.Conditioning.Output(display_name="CONDITIONING", tooltip="Only for the shapes model.")],
        )

    @classmethod
    def validate_inputs(cls, text) -> bool | str:
        try:
            shapes.tokenize(text)
        except ValueError as e:
            return f"text: {e}"
        return True

    @classmethod
    def execute(cls, model, text) -> io.NodeOutput:
        return io.NodeOutput(shapes_conditioning(model, text))


class EmptyShapesLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DNGEmptyShapesLatent",
            display_name="Empty Shapes Latent (reference model)",
            category=CATEGORY,
            description="An empty LATENT of the shapes model's size (its latent is the RGB image)." + _SHAPES_NOTE,
            inputs=[
                io.Model.Input("model", tooltip="The shapes model (sets the image size)."),
                io.Int.Input("batch_size", default=16, min=1, max=4096, tooltip="Number of images."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="Zeros of shape [batch, 3, 16, 16].")],
        )

    @classmethod
    def execute(cls, model, batch_size) -> io.NodeOutput:
        c = _shapes_denoiser(model).config
        return io.NodeOutput({"samples": torch.zeros(batch_size, c.in_channels, c.image_size, c.image_size)})


class ShapesToImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DNGShapesToImage",
            display_name="Shapes to Image Grid (reference model)",
            category=CATEGORY,
            description="Turns the shapes model's LATENT (RGB pixels in [-1, 1]) into one IMAGE grid." + _SHAPES_NOTE,
            inputs=[
                io.Latent.Input("samples", tooltip="LATENT from a sampler using the shapes model."),
                io.Int.Input("columns", default=8, min=1, max=256, tooltip="Images per row of the grid."),
                io.Int.Input("scale", default=8, min=1, max=64, tooltip="Nearest-neighbour upscaling factor."),
            ],
            outputs=[io.Image.Output(display_name="IMAGE", tooltip="The grid.")],
        )

    @classmethod
    def execute(cls, samples, columns, scale) -> io.NodeOutput:
        return io.NodeOutput(image_grid(samples["samples"], 3, columns, scale, "the shapes model's"))


REFERENCE_NODES = [LoadReferenceModel, DigitConditioning, EmptyDigitLatent, DigitsToImage,
                   LoadShapesModel, ShapesTextEncode, EmptyShapesLatent, ShapesToImage]
