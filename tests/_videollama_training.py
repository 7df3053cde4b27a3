"""Shared helpers for the fine-tuning tests: a tiny saved model + processor, and a tiny dataset of real media files."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import PIL.Image
import pytest
import torch
from _reference import tiny_config
from _videollama_media import LLAMA
from transformers.video_utils import VideoMetadata

from transformers_videollama import (
    VideoLlamaForConditionalGeneration,
    VideoLlamaProcessor,
    VideoLlamaVideoProcessor,
    build_videollama_tokenizer,
)
from transformers_videollama.video_processing_videollama import DecodedVideo


ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "examples" / "train_videollama.py"
NUM_VIDEO_TOKENS, NUM_AUDIO_TOKENS = 6, 3  # tiny_config's video / audio Q-Former queries
IMAGE_SIZE = 28


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is faster, and far faster when other processes share the two cores (import this
    fixture into a test module to use it there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_training_config(imagebind_vision: bool = False):
    """tiny_config with the fixture tokenizer's vocabulary (320) and placeholder ids (320 / 321)."""
    text = dict(tiny_config().text_config.to_dict())
    text.update(vocab_size=320)
    extra = {}
    if imagebind_vision:
        extra["imagebind_vision_config"] = {
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "projection_dim": 16,
            "image_size": IMAGE_SIZE,
            "patch_size": 14,
        }
    return tiny_config(text_config=text, video_token_index=320, audio_token_index=321, **extra)


def tiny_processor() -> VideoLlamaProcessor:
    return VideoLlamaProcessor(
        video_processor=VideoLlamaVideoProcessor(num_frames=4, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
        tokenizer=build_videollama_tokenizer(LLAMA),
        num_video_query_tokens=NUM_VIDEO_TOKENS,
        num_audio_query_tokens=NUM_AUDIO_TOKENS,
    )


def make_model_dir(path: Path, imagebind_vision: bool = False, seed: int = 0, lm_head_scale: float = 1.0) -> Path:
    """Save a random tiny model and its processor, as `convert_release` would lay them out.

    `lm_head_scale` > 1 gives the random LLM a trained LLM's confident output layer: with the init's near-zero
    `lm_head` every input yields almost the same near-uniform distribution, and no adapter could lower the loss.
    """
    torch.manual_seed(seed)
    model = VideoLlamaForConditionalGeneration(tiny_training_config(imagebind_vision)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(lm_head_scale)
    model.save_pretrained(path)
    tiny_processor().save_pretrained(path)
    return path


ANSWERS = ("It is red.", "It is green.", "It is blue.", "It is white.")
COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (230, 230, 230))


def make_dataset(path: Path, num_records: int = 8, with_image: bool = True, with_audio: bool = False) -> Path:
    """Videos (and an image) of flat colours, and a JSONL whose answers name the colour. Returns the JSONL path."""
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(num_records):
        colour = i % len(COLOURS)
        name = f"clip{i}.mp4"
        write_clip(path / name, COLOURS[colour], with_audio)
        record = {
            "video": name,
            "conversations": [
                {"from": "human", "value": "What colour is the video?"},
                {"from": "gpt", "value": ANSWERS[colour]},
            ],
        }
        if with_audio:
            record["audio"] = True
        lines.append(record)
    if with_image:
        PIL.Image.fromarray(np.full((40, 30, 3), COLOURS[0], dtype=np.uint8)).save(path / "red.jpg")
        lines.append(
            {
                "image": "red.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is it?"},
                    {"from": "gpt", "value": ANSWERS[0]},
                ],
            }
        )
    jsonl = path / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return jsonl


def write_clip(path: Path, rgb: tuple[int, int, int], with_audio: bool = False) -> Path:
    """A 6-frame 32x32 H.264 clip of one flat colour (a faint ramp makes frames differ), optional 1 s sine audio."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        audio = container.add_stream("aac", rate=16000, layout="mono") if with_audio else None
        for t in range(6):
            image = np.empty((32, 32, 3), dtype=np.uint8)
            image[:] = rgb
            image[0, :, 0] = t * 10
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 25)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, 0
            for packet in audio.encode(frame):
                container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


def run_training(argv: list[str]):
    """Run the example entry point in this process; returns its trainer."""
    import importlib.util
    import sys

    if "train_videollama" not in sys.modules:
        spec = importlib.util.spec_from_file_location("train_videollama", TRAIN_SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["train_videollama"] = module
        spec.loader.exec_module(module)
    return sys.modules["train_videollama"].run([str(a) for a in argv])


def trainable_state(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def decoded_video(indices: list[int], fps: float) -> DecodedVideo:
    """An already decoded video whose metadata yields the original's timestamp sentence (frames are not looked at)."""
    metadata = VideoMetadata(total_num_frames=max(indices) + 1, fps=fps, width=8, height=8, frames_indices=indices)
    return DecodedVideo(np.zeros((len(indices), 8, 8, 3), np.uint8), metadata, "video", "synthetic")


def decoded_image() -> DecodedVideo:
    metadata = VideoMetadata(total_num_frames=1, fps=None, width=8, height=8, frames_indices=[0])
    return DecodedVideo(np.zeros((1, 8, 8, 3), np.uint8), metadata, "image", "synthetic")
