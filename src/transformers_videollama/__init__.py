"""transformers-videollama: Video-LLaMA (audio-visual video LLM) as a Hugging Face transformers model.

Importing the package registers its classes with transformers' Auto classes (and nothing else), so folders saved by
this package load through `AutoConfig`, `AutoModel`, `AutoModelForImageTextToText` and `AutoModelForMultimodalLM`
without `trust_remote_code`.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForMultimodalLM,
    AutoProcessor,
)
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .configuration_imagebind import ImageBindAudioConfig, ImageBindVisionConfig
from .configuration_videollama import (
    VideoLlamaConfig,
    VideoLlamaQFormerConfig,
    VideoLlamaVisionConfig,
    available_presets,
    load_preset,
    preset_metadata,
)
from .convert_videollama_weights_to_hf import ConversionError, ReleaseFiles, convert_release
from .feature_extraction_videollama import VideoLlamaFeatureExtractor
from .modeling_imagebind import ImageBindAudioModel, ImageBindVisionModel
from .modeling_videollama import (
    VideoLlamaForConditionalGeneration,
    VideoLlamaModel,
    VideoLlamaPreTrainedModel,
)
from .processing_videollama import VideoLlamaProcessor, build_videollama_tokenizer
from .video_processing_videollama import VideoLlamaVideoProcessor


__version__ = "0.1.0"


def _register() -> None:
    """Register with transformers' Auto classes. Idempotent (`exist_ok`), so re-imports are harmless."""
    AutoConfig.register(VideoLlamaConfig.model_type, VideoLlamaConfig, exist_ok=True)
    AutoModel.register(VideoLlamaConfig, VideoLlamaModel, exist_ok=True)
    AutoModelForImageTextToText.register(VideoLlamaConfig, VideoLlamaForConditionalGeneration, exist_ok=True)
    AutoModelForMultimodalLM.register(VideoLlamaConfig, VideoLlamaForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(VideoLlamaConfig, VideoLlamaProcessor, exist_ok=True)
    # the module-level AutoVideoProcessor: `transformers.AutoVideoProcessor` is a placeholder without torchvision
    AutoVideoProcessor.register(VideoLlamaConfig, VideoLlamaVideoProcessor, exist_ok=True)
    AutoFeatureExtractor.register(VideoLlamaConfig, VideoLlamaFeatureExtractor, exist_ok=True)


_register()

__all__ = [
    "ConversionError",
    "ImageBindAudioConfig",
    "ImageBindAudioModel",
    "ImageBindVisionConfig",
    "ImageBindVisionModel",
    "ReleaseFiles",
    "VideoLlamaConfig",
    "VideoLlamaFeatureExtractor",
    "VideoLlamaForConditionalGeneration",
    "VideoLlamaModel",
    "VideoLlamaPreTrainedModel",
    "VideoLlamaProcessor",
    "VideoLlamaQFormerConfig",
    "VideoLlamaVideoProcessor",
    "VideoLlamaVisionConfig",
    "available_presets",
    "build_videollama_tokenizer",
    "convert_release",
    "load_preset",
    "preset_metadata",
]
