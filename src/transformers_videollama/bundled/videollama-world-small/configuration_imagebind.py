"""Configurations of the ImageBind trunks Video-LLaMA uses (ImageBind-huge, Girdhar et al. 2023).

transformers has no ImageBind, so the two trunks Video-LLaMA needs are written in this package:

* the **audio** trunk, which encodes 2-second log-mel clips at inference time (audio branch);
* the **vision** trunk, which encodes frames while the audio branch is *trained* on visual data (ImageBind's joint
  embedding space lets the audio Q-Former learn from images and be used on sounds).

Only these two of ImageBind's six modalities are ever used by Video-LLaMA, so only they exist here.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class ImageBindAudioConfig(PreTrainedConfig):
    r"""
    Configuration of the ImageBind audio trunk (defaults: ImageBind-huge, as released in `imagebind_huge.pth`).

    Args:
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the transformer (ImageBind's `audio_embed_dim`).
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of pre-norm transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per block.
        intermediate_size (`int`, *optional*, defaults to 3072):
            MLP width (4x the hidden size in ImageBind).
        projection_dim (`int`, *optional*, defaults to 1024):
            Size of ImageBind's joint embedding (`out_embed_dim`), the output of the head's linear projection.
        num_mel_bins (`int`, *optional*, defaults to 128):
            Mel bins of the input spectrogram.
        target_length (`int`, *optional*, defaults to 204):
            Frames of the input spectrogram (2 s at a 10 ms hop, padded).
        patch_size (`int`, *optional*, defaults to 16):
            Kernel of the convolutional stem.
        patch_stride (`int`, *optional*, defaults to 10):
            Stride of the stem; patches overlap, giving 12 x 19 = 228 patches for 128 x 204.
        add_bias_kv (`bool`, *optional*, defaults to `True`):
            ImageBind's audio attention appends one learned key and value to every sequence.
        stem_layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of the LayerNorm after the stem (PyTorch's default in the original).
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the block and head LayerNorms.
        logit_scale (`float`, *optional*, defaults to 20.0):
            The fixed scale ImageBind multiplies the L2-normalised audio embedding with (`exp(log(20))`).
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            MLP activation (exact GELU).
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on attention probabilities.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of the truncated-normal weight init.

    Example:

    ```python
    >>> from transformers_videollama import ImageBindAudioConfig, ImageBindAudioModel
    >>> model = ImageBindAudioModel(ImageBindAudioConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                                                  intermediate_size=256, projection_dim=32))
    ```
    """

    model_type = "videollama_imagebind_audio"
    base_config_key = "audio_config"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    projection_dim: int = 1024
    num_mel_bins: int = 128
    target_length: int = 204
    patch_size: int = 16
    patch_stride: int = 10
    add_bias_kv: bool = True
    stem_layer_norm_eps: float = 1e-5
    layer_norm_eps: float = 1e-6
    logit_scale: float | None = 20.0
    hidden_act: str = "gelu"
    attention_dropout: float | int = 0.0
    initializer_range: float = 0.02

    @property
    def num_patches(self) -> int:
        """Patches produced by the strided stem (228 for a 128 x 204 spectrogram)."""
        rows = (self.num_mel_bins - self.patch_size) // self.patch_stride + 1
        cols = (self.target_length - self.patch_size) // self.patch_stride + 1
        return rows * cols


@strict
class ImageBindVisionConfig(PreTrainedConfig):
    r"""
    Configuration of the ImageBind vision trunk (defaults: ImageBind-huge). Used only to *train* the audio branch on
    images, never at inference.

    Args:
        hidden_size (`int`, *optional*, defaults to 1280): Width of the transformer.
        num_hidden_layers (`int`, *optional*, defaults to 32): Number of pre-norm blocks.
        num_attention_heads (`int`, *optional*, defaults to 16): Attention heads per block.
        intermediate_size (`int`, *optional*, defaults to 5120): MLP width.
        projection_dim (`int`, *optional*, defaults to 1024): Size of the joint embedding.
        image_size (`int`, *optional*, defaults to 224): Input resolution.
        patch_size (`int`, *optional*, defaults to 14): Spatial patch size of the stem.
        num_frames (`int`, *optional*, defaults to 2):
            Temporal kernel of the Conv3d stem; a single image is repeated to this many frames first.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6): Epsilon of every LayerNorm.
        hidden_act (`str`, *optional*, defaults to `"gelu"`): MLP activation.
        attention_dropout (`float`, *optional*, defaults to 0.0): Dropout on attention probabilities.
        initializer_range (`float`, *optional*, defaults to 0.02): Std of the weight init.
    """

    model_type = "videollama_imagebind_vision"
    base_config_key = "imagebind_vision_config"

    hidden_size: int = 1280
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    intermediate_size: int = 5120
    projection_dim: int = 1024
    image_size: int = 224
    patch_size: int = 14
    num_frames: int = 2
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    attention_dropout: float | int = 0.0
    initializer_range: float = 0.02

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


__all__ = ["ImageBindAudioConfig", "ImageBindVisionConfig"]
