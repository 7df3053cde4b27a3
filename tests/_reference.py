"""Shared helpers for the tests that use fixture A (the original code's outputs; see fixtures/README.md)."""

import json
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from transformers_videollama import ReleaseFiles, VideoLlamaConfig


REFERENCE_DIR = Path(__file__).parent / "fixtures" / "reference"


@cache
def reference_meta() -> dict:
    """The generator's config.json: every tiny dimension, token ids, prompts, training info."""
    return json.loads((REFERENCE_DIR / "config.json").read_text())


@cache
def reference_inputs() -> dict[str, torch.Tensor]:
    return load_file(REFERENCE_DIR / "inputs.safetensors")


@cache
def reference_outputs() -> dict[str, torch.Tensor]:
    return load_file(REFERENCE_DIR / "outputs.safetensors")


def release_files(with_audio: bool = True) -> ReleaseFiles:
    r = REFERENCE_DIR
    return ReleaseFiles(
        eva_vit=r / "eva_vit_g.pth",
        blip2=r / "blip2_pretrained_flant5xxl.pth",
        imagebind=r / "imagebind_huge.pth",
        llama=r / "llama",
        vl_checkpoint=r / "VL_checkpoint.pth",
        al_checkpoint=r / "AL_checkpoint.pth" if with_audio else None,
    )


def reference_config(**overrides) -> VideoLlamaConfig:
    """The tiny architecture of fixture A, read from the generator's own description of it."""
    meta = reference_meta()
    vision, imagebind = meta["vision"], meta["imagebind"]

    def qformer(d: dict) -> dict:
        return {
            "hidden_size": d["hidden_size"],
            "num_hidden_layers": d["num_hidden_layers"],
            "num_attention_heads": d["num_attention_heads"],
            "intermediate_size": d["intermediate_size"],
            "num_query_tokens": d["num_query_token"],
            "cross_attention_frequency": d["cross_attention_freq"],
            "layer_norm_eps": d["layer_norm_eps"],
        }

    kwargs = {
        "vision_config": {
            "hidden_size": vision["embed_dim"],
            "intermediate_size": vision["mlp_hidden_dim"],
            "num_hidden_layers": vision["depth"],
            "num_attention_heads": vision["num_heads"],
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
        },
        "qformer_config": qformer(meta["qformer"]),
        "video_qformer_config": qformer(meta["video_qformer"]),
        "audio_qformer_config": qformer(meta["audio_qformer"]),
        "audio_config": {
            "hidden_size": imagebind["audio_embed_dim"],
            "num_hidden_layers": imagebind["audio_num_blocks"],
            "num_attention_heads": imagebind["audio_num_heads"],
            "intermediate_size": 4 * imagebind["audio_embed_dim"],
            "projection_dim": imagebind["out_embed_dim"],
        },
        "text_config": json.loads((REFERENCE_DIR / "llama" / "config.json").read_text()),
        "max_frame_pos": meta["video_qformer"]["max_frame_pos"],
        "max_audio_clips": meta["audio_qformer"]["audio_position_embedding_rows"],
        "video_token_index": meta["IMAGE_PATCH_TOKEN_ID"],
        "audio_token_index": meta["AUDIO_PATCH_TOKEN_ID"],
    }
    kwargs.update(overrides)
    return VideoLlamaConfig(**kwargs)


def tiny_config(**overrides) -> VideoLlamaConfig:
    """An even smaller random architecture for fast unit tests (no weights needed)."""
    kwargs = {
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 28,
            "patch_size": 14,
        },
        "qformer_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "num_query_tokens": 4,
        },
        "video_qformer_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "num_query_tokens": 6,
            "cross_attention_frequency": 1,
        },
        "audio_qformer_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "num_query_tokens": 3,
            "cross_attention_frequency": 1,
        },
        "audio_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "projection_dim": 16,
        },
        "text_config": {
            "model_type": "llama",
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 256,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        "max_frame_pos": 8,
        "video_token_index": 99,
        "audio_token_index": 100,
    }
    kwargs.update(overrides)
    return VideoLlamaConfig(**kwargs)
