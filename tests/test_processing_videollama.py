"""Processor: exact demo prompts and token ids, chat templates, placeholders, batching, audio fallback, errors."""

import json
import logging
import re

import pytest
import sentencepiece as spm
import torch
from _videollama_media import LLAMA, MEDIA, PREPROCESS, write_video
from transformers import AutoFeatureExtractor, AutoProcessor
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from transformers_videollama import VideoLlamaConfig
from transformers_videollama.feature_extraction_videollama import VideoLlamaFeatureExtractor
from transformers_videollama.media_io_videollama import NoAudioTrackError
from transformers_videollama.processing_videollama import (
    AUDIO_TOKEN,
    VIDEO_TOKEN,
    VideoLlamaProcessor,
    build_videollama_tokenizer,
)
from transformers_videollama.video_processing_videollama import VideoLlamaVideoProcessor


VIDEO_ID, AUDIO_ID = 320, 321  # vocab_size and vocab_size + 1 of the fixture tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_videollama_tokenizer(LLAMA)


@pytest.fixture(scope="module")
def processor(tokenizer):
    return VideoLlamaProcessor(
        video_processor=VideoLlamaVideoProcessor(),
        feature_extractor=VideoLlamaFeatureExtractor(),
        tokenizer=tokenizer,
        num_video_query_tokens=32,
        num_audio_query_tokens=8,
    )


# --- the original's tokenisation, rebuilt from SentencePiece (transformers 4.28 slow LlamaTokenizer semantics) ---

_SP = spm.SentencePieceProcessor(model_file=str(LLAMA / "tokenizer.model"))
_SPECIAL = {"<s>": 1, "</s>": 2, "<unk>": 0}


def _slow_llama_ids(text: str, add_special_tokens: bool) -> list[int]:
    """4.28 slow LlamaTokenizer: split on special tokens (no stripping), SentencePiece-encode each piece, BOS."""
    ids = [1] if add_special_tokens else []
    for piece in re.split(r"(<s>|</s>|<unk>)", text):
        if piece:
            ids += [_SPECIAL[piece]] if piece in _SPECIAL else _SP.encode(piece)
    return ids


def _original_ids(scenario: dict, order: list[str]) -> list[int]:
    """Segments tokenised one by one (BOS only on the first) with the media embeddings in between."""
    ids = []
    for i, segment in enumerate(scenario["tokenizer_segments"]):
        ids += _slow_llama_ids(segment["text"], segment["add_special_tokens"])
        if i < len(order):
            ids += [AUDIO_ID] * 8 if order[i] == "audio" else [VIDEO_ID] * 32
    return ids


def _scenarios():
    for name, media in (("dog_barking", "dog_barking.mp4"), ("birthday", "birthday.mp4"), ("dog", "dog.jpg")):
        for key in json.loads((PREPROCESS / f"{name}.json").read_text())["prompts"]:
            for turn in (1, 2):
                yield pytest.param(name, media, key, turn, id=f"{name}-{key}-turn{turn}")


def _conversation(name, media, key, scenario, turn):
    """The conversation a user writes to get the demo's prompt for this scenario."""
    kind = "image" if media.endswith(".jpg") else "video"
    messages = []
    if key.startswith("demo_audiovideo") and key.endswith("audio_checkbox_off") and kind == "video":
        messages.append({"role": "system", "content": ""})  # the audio-visual demo's (empty) system message
    messages.append(
        {
            "role": "user",
            "content": [{"type": kind, "path": str(MEDIA / media)}, {"type": "text", "text": scenario["question"]}],
        }
    )
    if turn == 2:
        messages += [
            {"role": "assistant", "content": [{"type": "text", "text": scenario["turn2"]["canned_answer_turn1"]}]},
            {"role": "user", "content": [{"type": "text", "text": scenario["turn2"]["question"]}]},
        ]
    return messages


@pytest.mark.parametrize("name, media, key, turn", list(_scenarios()))
def test_demo_prompts_and_token_ids_equal_the_original(processor, name, media, key, turn, caplog):
    scenario = json.loads((PREPROCESS / f"{name}.json").read_text())["prompts"][key]
    expected = scenario if turn == 1 else scenario["turn2"]
    family = "vicuna" if "|vicuna" in key else "llama2"
    audio = key.endswith("audio_checkbox_on")
    conversation = _conversation(name, media, key, scenario, turn)
    kwargs = {"chat_template": family, "add_generation_prompt": True, "load_audio_from_video": audio}

    prompt = processor.apply_chat_template(conversation, **kwargs)
    assert processor.original_prompt(prompt) == expected["prompt"]  # byte-identical to the demo's string

    out = processor.apply_chat_template(conversation, tokenize=True, return_dict=True, **kwargs)
    assert out["input_ids"][0].tolist() == _original_ids(expected, scenario["img_list_order"])
    assert out["attention_mask"].all()
    n_media = 1 if media.endswith(".jpg") else 8
    assert out["pixel_values_videos"].shape == (1, n_media, 3, 224, 224)
    if scenario["audio_used"]:
        assert out["input_values"].shape == (1, 8, 1, 128, 204)
    else:
        assert "input_values" not in out


def test_tokenizer_reproduces_the_original_setup(tokenizer, tmp_path):
    assert tokenizer.convert_tokens_to_ids([VIDEO_TOKEN, AUDIO_TOKEN]) == [VIDEO_ID, AUDIO_ID]
    assert (tokenizer.pad_token, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        "<unk>",
        0,
        1,
        2,
    )
    text = " CANNED_ANSWER_TURN_1 </s><s>[INST] Please describe it in more detail. [/INST]"
    assert tokenizer(text, add_special_tokens=False).input_ids == _slow_llama_ids(text, False)
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text).input_ids == _slow_llama_ids(text, True)
    assert reloaded.convert_tokens_to_ids([VIDEO_TOKEN, AUDIO_TOKEN]) == [VIDEO_ID, AUDIO_ID]


def test_training_strings_tokenise_like_the_original(tokenizer):
    examples = json.loads((PREPROCESS / "training_text_examples.json").read_text())
    texts = [v for v in _strings(examples) if "<ImageHere>" not in v]
    texts += [s for v in _strings(examples) for s in v.split("<ImageHere>") if s]
    assert texts
    for text in texts:
        assert tokenizer(text).input_ids == _slow_llama_ids(text, True)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_placeholder_counts_come_from_the_config(tokenizer):
    small = VideoLlamaProcessor(tokenizer=tokenizer, num_video_query_tokens=3, num_audio_query_tokens=2)
    text = f"a {AUDIO_TOKEN} b {VIDEO_TOKEN} c"
    out = small(text=text, videos=[str(MEDIA / "dog.jpg")], audio=[str(MEDIA / "dog_barking.mp4")])
    ids = out["input_ids"][0].tolist()
    assert ids.count(VIDEO_ID) == 3 and ids.count(AUDIO_ID) == 2
    start = ids.index(VIDEO_ID)
    assert ids[start : start + 3] == [VIDEO_ID] * 3


def test_no_audio_track_warns_and_uses_the_video_only_prompt(processor, caplog):
    conversation = [
        {
            "role": "user",
            "content": [{"type": "video", "path": str(MEDIA / "birthday.mp4")}, {"type": "text", "text": "Hi?"}],
        }
    ]
    with caplog.at_level(logging.WARNING):
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, load_audio_from_video=True)
    assert "birthday.mp4' has no audio track. Using the video-only prompt" in caplog.text
    assert prompt == (
        "###Human: <Video><ImageHere></Video> The video contains 8 frames sampled at 0.0, 2.1, 4.2, 6.2, 8.3, 10.4, "
        "12.5, 14.6 seconds.  Hi?###Assistant:"
    )
    with pytest.raises(NoAudioTrackError, match=r"birthday\.mp4' has no audio track"):
        processor.apply_chat_template(conversation, load_audio_from_video=True, audio_fallback="error")


def test_too_short_audio_track_falls_back_visibly(processor, tmp_path, caplog):
    path = write_video(tmp_path / "blip.mp4", num_frames=5, audio_seconds=0.005)
    conversation = [{"role": "user", "content": [{"type": "video", "path": str(path)}, {"type": "audio"}]}]
    with caplog.at_level(logging.WARNING):
        out = processor.apply_chat_template(conversation, load_audio_from_video=True, tokenize=True, return_dict=True)
    assert "blip.mp4' is too short (1024 samples at 48000 Hz)" in caplog.text
    assert "input_values" not in out and out["pixel_values_videos"].shape == (1, 5, 3, 224, 224)


def test_explicit_audio_block_after_a_video(processor):
    conversation = [
        {"role": "system", "content": ""},
        {
            "role": "user",
            "content": [
                {"type": "video", "path": str(MEDIA / "dog_barking.mp4")},
                {"type": "audio"},
                {"type": "text", "text": "Q"},
            ],
        },
    ]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt.startswith(
        "###Human: Close your eyes, open your ears and you imagine only based on the sound that: <AudioHere>."
    )
    assert prompt.endswith("seen and heard. Q###Assistant:")


def test_batch_with_left_padding_and_mixed_frame_counts(processor, tmp_path):
    short = write_video(tmp_path / "five.mp4", num_frames=5)
    conversations = [
        [{"role": "user", "content": [{"type": "video", "path": str(short)}, {"type": "text", "text": "Short?"}]}],
        [
            {
                "role": "user",
                "content": [
                    {"type": "video", "path": str(MEDIA / "dog_barking.mp4")},
                    {"type": "text", "text": "A much longer question about the dog in this video?"},
                ],
            }
        ],
    ]
    out = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        load_audio_from_video=True,
        processor_kwargs={"padding": True, "padding_side": "left"},
    )
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape[0] == 2 and mask[0, 0] == 0 and mask[1].all() and ids[0, 0] == 0  # pad = unk = 0, on the left
    assert out["pixel_values_videos"].shape == (2, 8, 3, 224, 224)
    assert out["video_frames_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 8]
    assert out["input_values"].shape == (1, 8, 1, 128, 204)  # only the dog video has an audio track
    assert (ids[0] == AUDIO_ID).sum() == 0 and (ids[1] == AUDIO_ID).sum() == 8


def test_mismatched_placeholders_and_truncation_are_errors(processor):
    with pytest.raises(ValueError, match=r"1 <ImageHere> placeholder\(s\) but 2 video/image input\(s\)"):
        processor(text=f"x {VIDEO_TOKEN}", videos=[str(MEDIA / "dog.jpg")] * 2)
    with pytest.raises(ValueError, match=r"1 <AudioHere> placeholder\(s\) but 0 audio"):
        processor(text=f"x {AUDIO_TOKEN}")
    with pytest.raises(ValueError, match=r"truncation .* must not cut media placeholders"):
        processor(text=f"x {VIDEO_TOKEN} y", videos=[str(MEDIA / "dog.jpg")], truncation=True, max_length=10)


def test_a_bad_file_fails_the_whole_batch(processor, tmp_path):
    (tmp_path / "bad.mp4").write_text("not a video")
    with pytest.raises(ValueError, match=r"bad\.mp4' is not a readable media file"):
        processor(
            text=[f"{VIDEO_TOKEN} a", f"{VIDEO_TOKEN} b"], videos=[str(MEDIA / "dog.jpg"), str(tmp_path / "bad.mp4")]
        )


def test_save_and_load_round_trip(tokenizer, tmp_path):
    AutoVideoProcessor.register(VideoLlamaConfig, VideoLlamaVideoProcessor, exist_ok=True)
    AutoFeatureExtractor.register(VideoLlamaConfig, VideoLlamaFeatureExtractor, exist_ok=True)
    AutoProcessor.register(VideoLlamaConfig, VideoLlamaProcessor, exist_ok=True)
    original = VideoLlamaProcessor(
        video_processor=VideoLlamaVideoProcessor(),
        feature_extractor=VideoLlamaFeatureExtractor(),
        tokenizer=tokenizer,
        num_video_query_tokens=4,
        num_audio_query_tokens=2,
        chat_template="llama2",
    )
    original.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, VideoLlamaProcessor)
    assert (loaded.num_video_query_tokens, loaded.num_audio_query_tokens) == (4, 2)
    assert loaded.chat_template["default"] == original.chat_template["default"]
    conversation = [
        {"role": "user", "content": [{"type": "image", "path": str(MEDIA / "dog.jpg")}, {"type": "text", "text": "Q"}]}
    ]
    a = original.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    b = loaded.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert a["input_ids"].tolist() == b["input_ids"].tolist()
    # The saved default template is LLaMA-2's: BOS, then "[INST] <<SYS>>".
    head = _slow_llama_ids("[INST] <<SYS>>", True)
    assert a["input_ids"][0].tolist()[: len(head)] == head
    torch.testing.assert_close(a["pixel_values_videos"], b["pixel_values_videos"])


def test_frame_sampling_options_reach_the_prompt_and_the_pixels(processor):
    conversation = [
        {
            "role": "user",
            "content": [{"type": "video", "path": str(MEDIA / "birthday.mp4")}, {"type": "text", "text": "Q"}],
        }
    ]
    prompt = processor.apply_chat_template(conversation, processor_kwargs={"num_frames": 4})
    assert (
        "<Video><ImageHere></Video> The video contains 4 frames sampled at 0.0, 4.2, 8.3, 12.5 seconds.  Q###"
        in prompt
    )
    out = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, processor_kwargs={"num_frames": 4}
    )
    assert out["pixel_values_videos"].shape == (1, 4, 3, 224, 224)
