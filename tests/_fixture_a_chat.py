"""Fixture A's demo prompts as chat messages, for the generation / pipeline / remote-code tests.

The original demo tokenised its prompts segment by segment (`prompt_<name>_seg<j>_ids`) and generated greedily
(`prompt_<name>_greedy_ids`). Here the same prompts are written as the chat messages a user would send; the media are
fixture A's raw uint8 frames wrapped as `DecodedVideo`s (4 frames "sampled" at 2.5 fps, so the timestamp sentence
reads 0.0, 0.4, 0.8, 1.2 s as in the original), which the processor normalises itself. Fixture A stores audio only as
log-mel features, so audio prompts carry a placeholder `AudioTrack` whose features are swapped for the stored ones.
"""

import atexit
import shutil
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import torch
from _reference import reference_config, reference_inputs, reference_meta, release_files
from transformers.video_utils import VideoMetadata

from transformers_videollama import convert_release
from transformers_videollama.media_io_videollama import AudioTrack
from transformers_videollama.video_processing_videollama import DecodedVideo


QUESTION = "What is happening in this video?"
PROMPTS = ["vicuna_video", "vicuna_audio_video", "llama2_video", "llama2_audio_video", "vicuna_image"]
VIDEO_PROMPTS = [name for name in PROMPTS if "audio" not in name]


@cache
def _converted(chat_format: str) -> Path:
    out = Path(tempfile.mkdtemp(prefix=f"fixture_a_{chat_format}_"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    return convert_release(
        release_files(), out, dtype="float32", config=reference_config(), chat_format=chat_format, progress=False
    )


def convert_fixture_a(out: Path, chat_format: str = "vicuna") -> Path:
    """Fixture A's release files converted (float32, with tokenizer + processor), copied into `out`.

    The conversion runs once per test process (the generation, pipeline, remote-code and hub tests all need it).
    """
    shutil.copytree(_converted(chat_format), out, dirs_exist_ok=True)
    return Path(out)


def decoded(sample: int, image: bool = False) -> DecodedVideo:
    frames = reference_inputs()["video_frames_uint8"][sample].numpy()  # (4, 56, 56, 3)
    if image:
        metadata = VideoMetadata(total_num_frames=1, fps=None, width=56, height=56, frames_indices=[0])
        return DecodedVideo(frames[:1], metadata, kind="image", source_name="fixture image")
    metadata = VideoMetadata(total_num_frames=4, fps=2.5, width=56, height=56, frames_indices=[0, 1, 2, 3])
    return DecodedVideo(frames, metadata, kind="video", source_name="fixture video")


@cache
def _placeholder_audio() -> AudioTrack:
    wave = (0.1 * np.sin(np.linspace(0, 400 * np.pi, 32000))).astype(np.float32)[None]
    return AudioTrack(wave, 16000, "placeholder audio")


def conversation(name: str, sample: int) -> list[dict]:
    """The chat messages that render to fixture A's prompt `name` for batch sample `sample`."""
    if name == "vicuna_image":
        content = [{"type": "image", "image": decoded(sample, image=True)}]
        messages = []  # the image demo keeps its default system message
    else:
        content = [{"type": "video", "video": decoded(sample)}]
        if "audio" in name:
            content.append({"type": "audio", "audio": _placeholder_audio()})
        messages = [{"role": "system", "content": ""}]  # the video demos clear the system message
    return [*messages, {"role": "user", "content": [*content, {"type": "text", "text": QUESTION}]}]


def chat_template(name: str) -> str:
    return "llama2" if name.startswith("llama2") else "vicuna"


def original_ids(name: str) -> list[int]:
    """The ids the original laid out: segment ids with the media placeholders (video 8, audio 4) in between."""
    meta, inputs, config = reference_meta(), reference_inputs(), reference_config()
    prompt, ids = meta["prompts"][name], []
    for j in range(len(prompt["segments"])):
        ids += inputs[f"prompt_{name}_seg{j}_ids"].tolist()
        if j < len(prompt["multimodal_order"]):
            audio = prompt["multimodal_order"][j].startswith("audio")
            token = config.audio_token_index if audio else config.video_token_index
            ids += [token] * (config.num_audio_query_tokens if audio else config.num_video_query_tokens)
    return ids


def processor_inputs(processor, name: str) -> dict:
    """processor.apply_chat_template on both samples of `name`; stored audio features replace the placeholder's."""
    batch = processor.apply_chat_template(
        [conversation(name, 0), conversation(name, 1)],
        chat_template=chat_template(name),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    if "audio" in name:
        batch["input_values"] = reference_inputs()["audio"].clone()
    return dict(batch)


def greedy_reference(name: str) -> torch.Tensor:
    """The original's 6 greedy tokens per sample (column 0 is the BOS that transformers 4.28 prepended)."""
    from _reference import reference_outputs

    return reference_outputs()[f"prompt_{name}_greedy_ids"][:, 1:]
