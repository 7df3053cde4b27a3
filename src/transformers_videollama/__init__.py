"""transformers-videollama: Video-LLaMA (audio-visual video LLM) as a Hugging Face transformers model.

Importing the package registers its classes with transformers' Auto classes (and nothing else), so folders saved by
this package load through `AutoConfig`, `AutoModel`, `AutoModelForImageTextToText`, `AutoModelForMultimodalLM`,
`AutoProcessor`, `AutoVideoProcessor`, `AutoFeatureExtractor` and `pipeline("video-text-to-text")` without
`trust_remote_code`.
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
from transformers.pipelines import PIPELINE_REGISTRY

from .collator_videollama import VideoLlamaDataCollator
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
from .data_videollama import DATA_FORMATS, load_training_data
from .feature_extraction_videollama import VideoLlamaFeatureExtractor
from .modeling_imagebind import ImageBindAudioModel, ImageBindVisionModel
from .modeling_videollama import (
    VideoLlamaForConditionalGeneration,
    VideoLlamaModel,
    VideoLlamaPreTrainedModel,
)
from .pipeline_videollama import VideoLlamaChat, VideoTextToTextPipeline
from .processing_videollama import VideoLlamaProcessor, build_videollama_tokenizer, train_videollama_tokenizer
from .training_videollama import (
    FrozenEncoderCache,
    PrecomputedFeaturesCollator,
    PrecomputedFrozenFeatures,
    VideoLlamaTrainer,
    available_training_presets,
    cache_frozen_encoders,
    caption_prompts,
    freeze_for_training,
    load_training_preset,
    lora_config,
    precompute_frozen_features,
)
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
    # transformers has no video-text-to-text task; register ours unless it is already there (re-imports stay quiet)
    if PIPELINE_REGISTRY.supported_tasks.get("video-text-to-text", {}).get("impl") is not VideoTextToTextPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            "video-text-to-text",
            pipeline_class=VideoTextToTextPipeline,
            pt_model=AutoModelForImageTextToText,
            type="multimodal",
        )


_register()

__all__ = [
    "DATA_FORMATS",
    "ConversionError",
    "ImageBindAudioConfig",
    "ImageBindAudioModel",
    "ImageBindVisionConfig",
    "ImageBindVisionModel",
    "ReleaseFiles",
    "VideoLlamaChat",
    "VideoLlamaConfig",
    "VideoLlamaDataCollator",
    "VideoLlamaFeatureExtractor",
    "VideoLlamaForConditionalGeneration",
    "VideoLlamaModel",
    "VideoLlamaPreTrainedModel",
    "VideoLlamaProcessor",
    "VideoLlamaQFormerConfig",
    "FrozenEncoderCache",
    "PrecomputedFeaturesCollator",
    "PrecomputedFrozenFeatures",
    "VideoLlamaTrainer",
    "VideoLlamaVideoProcessor",
    "VideoLlamaVisionConfig",
    "VideoTextToTextPipeline",
    "available_presets",
    "available_training_presets",
    "cache_frozen_encoders",
    "build_videollama_tokenizer",
    "train_videollama_tokenizer",
    "caption_prompts",
    "convert_release",
    "freeze_for_training",
    "load_preset",
    "load_training_data",
    "load_training_preset",
    "lora_config",
    "precompute_frozen_features",
    "preset_metadata",
]
