"""Video-LLaMA configuration.

One composite config holds a sub-config per box of the paper's figure:

    vision_config            EVA-CLIP ViT-g frame encoder (+ BLIP-2's `ln_vision`)      -> VideoLlamaVisionConfig
    qformer_config           BLIP-2 Q-Former, 32 queries per frame                     -> VideoLlamaQFormerConfig
    video_qformer_config     video Q-Former over all frames' queries, 2 layers          -> VideoLlamaQFormerConfig
    audio_config             ImageBind-huge audio trunk (optional: Vicuna-13B has none) -> ImageBindAudioConfig
    audio_qformer_config     audio Q-Former over the clips, 8 queries                   -> VideoLlamaQFormerConfig
    imagebind_vision_config  ImageBind vision trunk, only to *train* the audio branch    -> ImageBindVisionConfig
    text_config              the language model (LLaMA / Vicuna, any causal LM)         -> AutoConfig

Query-token counts live in the Q-Former sub-configs (one source of truth); the top-level config exposes them as
read-only properties (`num_video_query_tokens`, ...) because the processor needs them to expand placeholders.
Released variants are JSON presets in `presets/` (see `load_preset`).
"""

import json
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, Blip2QFormerConfig, Blip2VisionConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_imagebind import ImageBindAudioConfig, ImageBindVisionConfig


@strict
class VideoLlamaVisionConfig(Blip2VisionConfig):
    r"""
    EVA-CLIP ViT-g as BLIP-2 uses it. Identical to [`Blip2VisionConfig`] plus `post_layer_norm_eps`: LAVIS applies
    its separate `ln_vision` LayerNorm (PyTorch default eps 1e-5) after the ViT, while the blocks use eps 1e-6.

    Args:
        post_layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the final LayerNorm (`ln_vision` in the original).
    """

    model_type = "videollama_vision"
    base_config_key = "vision_config"

    post_layer_norm_eps: float = 1e-5


@strict
class VideoLlamaQFormerConfig(Blip2QFormerConfig):
    r"""
    A BLIP-2 style Q-Former (query path only) together with its learned query tokens.

    Args:
        num_query_tokens (`int`, *optional*, defaults to 32):
            Number of learned queries; this is the number of output tokens of the Q-Former.
    """

    model_type = "videollama_qformer"
    base_config_key = "qformer_config"

    num_query_tokens: int = 32


@strict
class VideoLlamaConfig(PreTrainedConfig):
    r"""
    Configuration of [`VideoLlamaForConditionalGeneration`]. Defaults build Video-LLaMA-2-7B (LLaMA-2-7B-chat).

    Args:
        vision_config (`dict` or `VideoLlamaVisionConfig`, *optional*): EVA ViT-g frame encoder.
        qformer_config (`dict` or `VideoLlamaQFormerConfig`, *optional*): BLIP-2 frame Q-Former (12 layers, 32 queries).
        video_qformer_config (`dict` or `VideoLlamaQFormerConfig`, *optional*): video Q-Former (2 layers, 32 queries).
        audio_config (`dict` or `ImageBindAudioConfig`, *optional*):
            ImageBind audio trunk. Pass `None` explicitly via `VideoLlamaConfig(audio_config=None, ...)` with
            `has_audio_branch=False` for vision-only variants.
        audio_qformer_config (`dict` or `VideoLlamaQFormerConfig`, *optional*): audio Q-Former (2 layers, 8 queries).
        imagebind_vision_config (`dict` or `ImageBindVisionConfig`, *optional*):
            ImageBind vision trunk; only present when the audio branch is trained on images.
        text_config (`dict` or `PreTrainedConfig`, *optional*): language model config (LLaMA by default).
        has_audio_branch (`bool`, *optional*, defaults to `True`): whether the audio tower/Q-Former exist.
        max_frame_pos (`int`, *optional*, defaults to 32): rows of the frame position embedding (max frames).
        max_audio_clips (`int`, *optional*, defaults to 8): rows of the audio position embedding (max clips).
        video_token_index (`int`, *optional*, defaults to 32000): id of `<ImageHere>` (outside the LLM vocabulary).
        audio_token_index (`int`, *optional*, defaults to 32001): id of `<AudioHere>` (outside the LLM vocabulary).
        initializer_range (`float`, *optional*, defaults to 0.02): std for the newly initialised weights.

    Example:

    ```python
    >>> from transformers_videollama import VideoLlamaConfig, load_preset
    >>> config = load_preset("video-llama-2-13b")
    >>> config.num_video_query_tokens, config.num_audio_query_tokens
    (32, 8)
    ```
    """

    model_type = "videollama"
    attribute_map = {"video_token_id": "video_token_index", "audio_token_id": "audio_token_index"}
    sub_configs_defaults = {
        "vision_config": VideoLlamaVisionConfig,
        "qformer_config": VideoLlamaQFormerConfig,
        "video_qformer_config": SubConfigSpec(
            VideoLlamaQFormerConfig,
            init_kwargs={"num_hidden_layers": 2, "cross_attention_frequency": 1, "encoder_hidden_size": 768},
        ),
        "audio_config": SubConfigSpec(ImageBindAudioConfig, optional=True),
        "audio_qformer_config": SubConfigSpec(
            VideoLlamaQFormerConfig,
            init_kwargs={
                "num_hidden_layers": 2,
                "cross_attention_frequency": 1,
                "encoder_hidden_size": 1024,
                "num_query_tokens": 8,
            },
            optional=True,
        ),
        "imagebind_vision_config": SubConfigSpec(ImageBindVisionConfig, optional=True),
        "text_config": SubConfigSpec(AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    video_qformer_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    audio_qformer_config: dict | PreTrainedConfig | None = None
    imagebind_vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    has_audio_branch: bool = True
    max_frame_pos: int = 32
    max_audio_clips: int = 8
    video_token_index: int = 32000
    audio_token_index: int = 32001
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # The audio branch is optional; when it is on, missing audio sub-configs get their (ImageBind-huge) defaults.
        if self.has_audio_branch:
            if self.audio_config is None:
                self.audio_config = ImageBindAudioConfig()
            if self.audio_qformer_config is None:
                self.audio_qformer_config = VideoLlamaQFormerConfig(
                    **self.sub_configs_defaults["audio_qformer_config"].init_kwargs
                )
        else:
            self.audio_config = None
            self.audio_qformer_config = None
        super().__post_init__(**kwargs)
        # Cross-attention widths follow from the encoders feeding each Q-Former; derive them rather than trust
        # hand-written numbers to agree.
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        self.video_qformer_config.encoder_hidden_size = self.qformer_config.hidden_size
        if self.has_audio_branch:
            self.audio_qformer_config.encoder_hidden_size = self.audio_config.projection_dim

    @property
    def num_query_tokens(self) -> int:
        """Queries of the BLIP-2 frame Q-Former (32 in the release)."""
        return self.qformer_config.num_query_tokens

    @property
    def num_video_query_tokens(self) -> int:
        """Tokens one video (or image) becomes in the prompt (32 in the release)."""
        return self.video_qformer_config.num_query_tokens

    @property
    def num_audio_query_tokens(self) -> int:
        """Tokens one audio track becomes in the prompt (8 in the release); 0 without an audio branch."""
        return self.audio_qformer_config.num_query_tokens if self.has_audio_branch else 0


PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def available_presets() -> list[str]:
    """Names of the shipped presets (the released Video-LLaMA variants)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str, **overrides) -> VideoLlamaConfig:
    """Build the config of a released variant from its JSON preset (`presets/<name>.json`).

    Presets are data, not code: each file holds the `config` dict plus the chat format the variant was trained with.
    `overrides` are applied on top (e.g. `has_audio_branch=False`).
    """
    path = PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"Unknown preset {name!r}; available: {', '.join(available_presets())}")
    data = json.loads(path.read_text())
    return VideoLlamaConfig(**{**data["config"], **overrides})


def preset_metadata(name: str) -> dict:
    """Everything in a preset file except the config (chat format, upstream checkpoints, licence notes)."""
    data = json.loads((PRESETS_DIR / f"{name}.json").read_text())
    return {k: v for k, v in data.items() if k != "config"}


__all__ = [
    "VideoLlamaConfig",
    "VideoLlamaQFormerConfig",
    "VideoLlamaVisionConfig",
    "available_presets",
    "load_preset",
    "preset_metadata",
]
