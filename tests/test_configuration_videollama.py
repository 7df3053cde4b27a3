import pytest
from _reference import tiny_config
from transformers import AutoConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from transformers_videollama import (
    ImageBindAudioConfig,
    ImageBindVisionConfig,
    VideoLlamaConfig,
    VideoLlamaQFormerConfig,
    VideoLlamaVisionConfig,
    available_presets,
    load_preset,
    preset_metadata,
)


OUR_CONFIG_CLASSES = [
    VideoLlamaConfig,
    VideoLlamaVisionConfig,
    VideoLlamaQFormerConfig,
    ImageBindAudioConfig,
    ImageBindVisionConfig,
]


@pytest.mark.parametrize("config_class", OUR_CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_model_type_does_not_clash_with_transformers(config_class):
    """`video_llama_3` (VideoLLaMA3) is in transformers; none of our model types may shadow a library one."""
    assert config_class.model_type not in CONFIG_MAPPING_NAMES
    assert config_class.model_type != "video_llama_3"


def test_registered_with_auto_config():
    assert AutoConfig.for_model("videollama").__class__ is VideoLlamaConfig


def test_release_defaults():
    config = VideoLlamaConfig()
    assert (config.num_query_tokens, config.num_video_query_tokens, config.num_audio_query_tokens) == (32, 32, 8)
    assert config.max_frame_pos == 32 and config.max_audio_clips == 8
    assert (config.video_token_index, config.audio_token_index) == (32000, 32001)
    assert config.video_token_id == 32000 and config.audio_token_id == 32001  # attribute_map aliases
    # EVA ViT-g, with LAVIS' ln_vision eps distinct from the blocks'
    v = config.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size) == (1408, 39, 16, 6144)
    assert (v.layer_norm_eps, v.post_layer_norm_eps) == (1e-6, 1e-5)
    # Q-Former cross-attention widths are derived from the encoders that feed them
    assert config.qformer_config.encoder_hidden_size == 1408
    assert config.qformer_config.cross_attention_frequency == 2 and config.qformer_config.num_hidden_layers == 12
    assert config.video_qformer_config.encoder_hidden_size == 768
    assert config.video_qformer_config.num_hidden_layers == 2
    assert config.video_qformer_config.cross_attention_frequency == 1
    assert config.audio_qformer_config.encoder_hidden_size == 1024 == config.audio_config.projection_dim
    assert config.audio_config.num_patches == 228 and config.audio_config.logit_scale == 20.0
    assert config.text_config.model_type == "llama"


def test_derived_widths_follow_the_encoders():
    config = VideoLlamaConfig(vision_config={"hidden_size": 96}, audio_config={"projection_dim": 40})
    assert config.qformer_config.encoder_hidden_size == 96
    assert config.audio_qformer_config.encoder_hidden_size == 40


def test_vision_only_variant():
    config = VideoLlamaConfig(has_audio_branch=False)
    assert config.audio_config is None and config.audio_qformer_config is None
    assert config.num_audio_query_tokens == 0


def test_save_and_reload_roundtrip(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VideoLlamaConfig)
    assert loaded.to_diff_dict() | {"_name_or_path": ""} == config.to_diff_dict() | {"_name_or_path": ""}
    assert loaded.num_video_query_tokens == 6 and loaded.num_audio_query_tokens == 3
    assert isinstance(loaded.video_qformer_config, VideoLlamaQFormerConfig)
    assert isinstance(loaded.audio_config, ImageBindAudioConfig)


def test_presets_are_the_released_variants():
    assert available_presets() == [
        "video-llama-2-13b",
        "video-llama-2-7b",
        "video-llama-vicuna-13b",
        "video-llama-vicuna-7b",
    ]
    expected = {
        "video-llama-2-7b": (4096, 32, 4096, True, "llama2"),
        "video-llama-2-13b": (5120, 40, 4096, True, "llama2"),
        "video-llama-vicuna-7b": (4096, 32, 2048, True, "vicuna"),
        "video-llama-vicuna-13b": (5120, 40, 2048, False, "vicuna"),
    }
    for name, (hidden, layers, positions, audio, chat_format) in expected.items():
        config = load_preset(name)
        text = config.text_config
        assert (text.hidden_size, text.num_hidden_layers, text.max_position_embeddings) == (hidden, layers, positions)
        assert text.vocab_size == 32000
        assert config.has_audio_branch is audio
        assert preset_metadata(name)["chat_format"] == chat_format


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="Unknown preset 'video-llama-3'.*video-llama-2-7b"):
        load_preset("video-llama-3")


def test_example_tiny_release_config_matches_the_fixture():
    """examples/tiny_release_config.json (used by the quickstart) is fixture A's architecture."""
    import json
    from pathlib import Path

    from _reference import reference_config

    path = Path(__file__).parents[1] / "examples" / "tiny_release_config.json"
    example = VideoLlamaConfig.from_json_file(str(path))
    assert json.loads(example.to_json_string()) == json.loads(reference_config().to_json_string())
