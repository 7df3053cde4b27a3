"""ImageBind trunks (audio, and vision for audio-branch training), the part of Video-LLaMA transformers lacks.

    audio:  (N, 1, 128, 204) log-mel clip
        -> Conv2d(1, D, k=16, s=10, no bias)      (N, D, 12, 19)
        -> flatten + LayerNorm(eps 1e-5)          (N, 228, D)
        -> [CLS] + learned position embedding     (N, 229, D)
        -> L pre-norm blocks; attention appends one learned key/value (`add_bias_kv`)
        -> head LayerNorm(eps 1e-6), take CLS     (N, D)          = `pooler_output`
        -> Linear(D, P, no bias) -> L2 norm * 20  (N, P)          = `embeds`

    vision: (N, 3, 224, 224) frame
        -> repeated to 2 frames -> Conv3d(3, D, k=s=(2,14,14), no bias) (N, 256, D)
        -> [CLS] + position embedding -> LayerNorm(eps 1e-6) before the blocks
        -> L pre-norm blocks (no bias_kv) -> head LayerNorm, CLS -> Linear -> L2 norm (no scale)

Video-LLaMA uses two outputs: the audio Q-Former reads `embeds` (joint space), while the joint audio-visual path
feeds `pooler_output` (before the projection) to the video Q-Former.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.blip_2.modeling_blip_2 import eager_attention_forward
from transformers.utils import ModelOutput

from .configuration_imagebind import ImageBindAudioConfig, ImageBindVisionConfig


@dataclass
class ImageBindOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
        Output of the last block (before the head LayerNorm).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        CLS token after the head LayerNorm, before the projection.
    embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
        The joint-space embedding: projected, L2-normalised and (audio) scaled by the fixed logit scale.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    embeds: torch.FloatTensor | None = None


class ImageBindAttention(nn.Module):
    """Self-attention laid out like `nn.MultiheadAttention` (which ImageBind uses), with separate q/k/v projections
    so PEFT can target them, and the attention kernel chosen by `config._attn_implementation` (eager or sdpa)."""

    def __init__(self, config: ImageBindAudioConfig | ImageBindVisionConfig, add_bias_kv: bool):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        # One learned key and value appended to every sequence (nn.MultiheadAttention(add_bias_kv=True)): gives each
        # query a "nothing relevant here" slot to attend to.
        self.bias_k = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if add_bias_kv else None
        self.bias_v = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if add_bias_kv else None

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        batch_size, seq_len, _ = hidden_states.shape
        query, key, value = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        if self.bias_k is not None:  # (B, L, D) -> (B, L + 1, D)
            key = torch.cat([key, self.bias_k.expand(batch_size, -1, -1)], dim=1)
            value = torch.cat([value, self.bias_v.expand(batch_size, -1, -1)], dim=1)
        query = query.view(batch_size, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return self.out_proj(attn_output.reshape(batch_size, seq_len, -1))


class ImageBindMLP(nn.Module):
    def __init__(self, config: ImageBindAudioConfig | ImageBindVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class ImageBindEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ImageBindAudioConfig | ImageBindVisionConfig, add_bias_kv: bool):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = ImageBindAttention(config, add_bias_kv=add_bias_kv)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ImageBindMLP(config)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), **kwargs)
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class ImageBindPreTrainedModel(PreTrainedModel):
    config: ImageBindAudioConfig | ImageBindVisionConfig
    base_model_prefix = "imagebind"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["ImageBindEncoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, (ImageBindAudioEmbeddings, ImageBindVisionEmbeddings)):
            init.trunc_normal_(module.class_embedding, std=std)
            init.trunc_normal_(module.position_embedding, std=std)
        elif isinstance(module, ImageBindAttention) and module.bias_k is not None:
            init.trunc_normal_(module.bias_k, std=std)
            init.trunc_normal_(module.bias_v, std=std)


class ImageBindAudioEmbeddings(nn.Module):
    def __init__(self, config: ImageBindAudioConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            1, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_stride, bias=False
        )
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.stem_layer_norm_eps)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        # (N, 1, mel, frames) -> (N, D, rows, cols) -> (N, rows*cols, D)
        patches = self.patch_embedding(input_values.to(self.patch_embedding.weight.dtype))
        patches = self.layer_norm(patches.flatten(2).transpose(1, 2))
        cls = self.class_embedding.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding


class ImageBindVisionEmbeddings(nn.Module):
    def __init__(self, config: ImageBindVisionConfig):
        super().__init__()
        self.num_frames = config.num_frames
        kernel = (config.num_frames, config.patch_size, config.patch_size)
        self.patch_embedding = nn.Conv3d(3, config.hidden_size, kernel_size=kernel, stride=kernel, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # An image is made a `num_frames`-frame clip by repetition (ImageBind's PadIm2Video): (N, 3, H, W) -> (N, 3, 2, H, W)
        clip = pixel_values.to(self.patch_embedding.weight.dtype).unsqueeze(2).expand(-1, -1, self.num_frames, -1, -1)
        patches = self.patch_embedding(clip).flatten(2).transpose(1, 2)  # (N, H/14 * W/14, D)
        cls = self.class_embedding.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding


class ImageBindHead(nn.Module):
    """LayerNorm -> CLS -> Linear (no bias) -> L2 normalise (-> fixed scale for audio)."""

    def __init__(self, config: ImageBindAudioConfig | ImageBindVisionConfig, logit_scale: float | None):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = logit_scale

    def forward(self, last_hidden_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.layer_norm(last_hidden_state)[:, 0]  # (N, D)
        embeds = nn.functional.normalize(self.projection(pooled), dim=-1)  # (N, P)
        if self.logit_scale is not None:
            embeds = embeds * self.logit_scale
        return pooled, embeds


class ImageBindAudioModel(ImageBindPreTrainedModel):
    """ImageBind-huge's audio trunk. Input: log-mel clips `(N, 1, 128, 204)`, or `(B, S, 1, 128, 204)` which is
    folded to `(B*S, ...)` and unfolded again in the outputs (`pooler_output`/`embeds` become `(B, S, ...)`)."""

    config: ImageBindAudioConfig
    main_input_name = "input_values"
    input_modalities = ("audio",)

    def __init__(self, config: ImageBindAudioConfig):
        super().__init__(config)
        self.embeddings = ImageBindAudioEmbeddings(config)
        self.layers = nn.ModuleList(
            [ImageBindEncoderLayer(config, add_bias_kv=config.add_bias_kv) for _ in range(config.num_hidden_layers)]
        )
        self.head = ImageBindHead(config, logit_scale=config.logit_scale)
        self.post_init()

    def forward(self, input_values: torch.Tensor, **kwargs) -> ImageBindOutput:
        return _run_trunk(self, input_values, pre_layer_norm=None, **kwargs)


class ImageBindVisionModel(ImageBindPreTrainedModel):
    """ImageBind-huge's vision trunk. Input: frames `(N, 3, 224, 224)` or `(B, T, 3, 224, 224)` (each frame is an
    independent image, as in the original audio-branch training)."""

    config: ImageBindVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: ImageBindVisionConfig):
        super().__init__(config)
        self.embeddings = ImageBindVisionEmbeddings(config)
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(
            [ImageBindEncoderLayer(config, add_bias_kv=False) for _ in range(config.num_hidden_layers)]
        )
        self.head = ImageBindHead(config, logit_scale=None)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> ImageBindOutput:
        return _run_trunk(self, pixel_values, pre_layer_norm=self.pre_layer_norm, **kwargs)


def _run_trunk(
    model: ImageBindAudioModel | ImageBindVisionModel,
    inputs: torch.Tensor,
    pre_layer_norm: nn.Module | None,
    **kwargs,
) -> ImageBindOutput:
    """Shared forward of both trunks: fold clips/frames into the batch, embed, blocks, head, unfold."""
    leading = inputs.shape[:-3]  # () or (B,) or (B, S)
    hidden_states = model.embeddings(inputs.reshape(-1, *inputs.shape[-3:]))  # (N, 1 + patches, D)
    if pre_layer_norm is not None:
        hidden_states = pre_layer_norm(hidden_states)
    for layer in model.layers:
        hidden_states = layer(hidden_states, **kwargs)
    pooled, embeds = model.head(hidden_states)
    return ImageBindOutput(
        last_hidden_state=hidden_states.reshape(*leading, *hidden_states.shape[-2:]),
        pooler_output=pooled.reshape(*leading, -1),
        embeds=embeds.reshape(*leading, -1),
    )


__all__ = ["ImageBindAudioModel", "ImageBindPreTrainedModel", "ImageBindVisionModel"]
