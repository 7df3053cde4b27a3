"""Training collator: the original's exact batches (fixture A), its exact training strings, and the default masking
that supervises exactly the answers (token by token)."""

import json

import pytest
import torch
from _reference import reference_inputs, reference_meta, reference_outputs
from _videollama_media import LLAMA, PREPROCESS
from _videollama_training import decoded_image, decoded_video, make_dataset, tiny_processor

from transformers_videollama import (
    VideoLlamaDataCollator,
    VideoLlamaProcessor,
    build_videollama_tokenizer,
    load_training_data,
)
from transformers_videollama.collator_videollama import IGNORE_INDEX, blip_caption


VIDEO_ID, AUDIO_ID = 320, 321


@pytest.fixture(scope="module")
def tokenizer():
    return build_videollama_tokenizer(LLAMA)


def _processor(tokenizer, num_video: int, num_audio: int) -> VideoLlamaProcessor:
    return VideoLlamaProcessor(tokenizer=tokenizer, num_video_query_tokens=num_video, num_audio_query_tokens=num_audio)


_video, _image = decoded_video, decoded_image


# ---------------------------------------------------------------------------------------------------------------
# Original masking == the original code's stored batches
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, chat_format, audio_branch, num_frames",
    [
        ("train_multi_vicuna", "vicuna", False, 4),
        ("train_multi_llama_v2", "llama2", False, 4),
        ("train_ibvision_multi_vicuna", "vicuna", True, 3),  # audio branch fed with frames: 4 audio placeholders
    ],
)
def test_original_masking_equals_the_original_batches(tokenizer, name, chat_format, audio_branch, num_frames):
    meta, stored = reference_meta(), reference_inputs()
    processor = _processor(
        tokenizer, meta["video_qformer"]["num_query_token"], meta["audio_qformer"]["num_query_token"]
    )
    collator = VideoLlamaDataCollator(
        processor, chat_format=chat_format, label_masking="original", audio_branch_from_images=audio_branch
    )
    # the fixture's frames were sampled at 0.0, 0.4, 0.8, ... seconds
    records = [
        {"media": _video([0, 4, 8, 12][:num_frames], 10.0), "conversations": c} for c in meta["train_conversations"]
    ]
    batch = collator(records)

    assert torch.equal(batch["labels"], stored[f"{name}_labels"])
    assert torch.equal(batch["attention_mask"].bool(), stored[f"{name}_attention_mask"])
    ids = batch["input_ids"]
    if audio_branch:  # the original wrote <ImageHere> for these slots; ours are audio placeholders
        assert (ids == VIDEO_ID).sum() == 0
        assert "imagebind_pixel_values" in batch and "pixel_values_videos" not in batch
        ids = ids.masked_fill(ids == AUDIO_ID, VIDEO_ID)
    assert torch.equal(ids, stored[f"{name}_input_ids"])


@pytest.mark.parametrize("name, audio_branch", [("train_caption", False), ("train_ibvision_caption", True)])
def test_caption_batches_equal_the_original(tokenizer, name, audio_branch):
    meta, stored = reference_meta(), reference_outputs()
    processor = _processor(
        tokenizer, meta["video_qformer"]["num_query_token"], meta["audio_qformer"]["num_query_token"]
    )
    collator = VideoLlamaDataCollator(
        processor,
        label_masking="original",
        end_sym=meta["train"]["train_caption"]["end_sym"],
        max_caption_tokens=512,
        audio_branch_from_images=audio_branch,
    )
    media = _image if audio_branch else (lambda: _video([0, 4, 8, 12], 10.0))
    batch = collator([{"media": media(), "caption": text} for text in meta["train"]["train_caption"]["texts"]])
    assert torch.equal(batch["labels"], stored[f"{name}_labels"])
    assert torch.equal(batch["attention_mask"], stored[f"{name}_attention_mask"])
    # default masking is the same for captions: caption + end_sym only
    default = VideoLlamaDataCollator(
        processor, end_sym="###", max_caption_tokens=512, audio_branch_from_images=audio_branch
    )
    assert torch.equal(
        default([{"media": media(), "caption": t} for t in meta["train"]["train_caption"]["texts"]])["labels"],
        stored[f"{name}_labels"],
    )


# ---------------------------------------------------------------------------------------------------------------
# The exact training strings of both templates (training_text_examples.json, real-media run, 32 placeholders)
# ---------------------------------------------------------------------------------------------------------------

EXAMPLES = json.loads((PREPROCESS / "training_text_examples.json").read_text())


def _dog_barking_video():
    video = json.loads((PREPROCESS / "dog_barking.json").read_text())["video"]
    return _video(video["indices"], video["avg_fps"])


@pytest.mark.parametrize(
    "key", ["video_instruct|vicuna", "video_instruct|llama_v2", "llava_instruct|vicuna", "llava_instruct|llama_v2"]
)
def test_training_text_is_the_originals(tokenizer, key):
    kind, chat_format = key.split("|")
    collator = VideoLlamaDataCollator(
        _processor(tokenizer, 32, 8), chat_format="llama2" if chat_format == "llama_v2" else "vicuna"
    )
    if kind == "video_instruct":
        record = {"media": _dog_barking_video(), "conversations": EXAMPLES["video_QA"]}
    else:
        record = {"media": _image(), "conversations": EXAMPLES["llava_conversations"]}
    encoded = collator.encode(record)
    assert encoded.text == EXAMPLES[key]["full_text"]
    if chat_format == "vicuna":  # the pieces the original measured for its masking
        from transformers_videollama.collator_videollama import render_training_text

        turns = [
            ("user" if i % 2 == 0 else "assistant", p.split(": ", 1)[1][:-1])
            for i, p in enumerate(EXAMPLES[key]["mask_length_pieces"][1:])
        ]
        _, _, pieces = render_training_text(turns, "vicuna")
        assert pieces == EXAMPLES[key]["mask_length_pieces"]


def test_timestamp_message_is_the_originals():
    from transformers_videollama.video_processing_videollama import frames_message

    assert frames_message(_dog_barking_video().metadata) == EXAMPLES["video_instruct_msg"]


# ---------------------------------------------------------------------------------------------------------------
# Default masking: exactly the answers (+ their end-of-turn marker), token by token
# ---------------------------------------------------------------------------------------------------------------


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("chat_format", ["vicuna", "llama2"])
def test_default_masking_supervises_exactly_the_answers(tokenizer, chat_format):
    processor = _processor(tokenizer, 6, 3)
    collator = VideoLlamaDataCollator(processor, chat_format=chat_format)
    conversations = [
        [
            {"from": "human", "value": "What is happening in this video?"},
            {"from": "gpt", "value": "A dog is running across a green field."},
            {"from": "human", "value": "Is it day or night?"},
            {"from": "gpt", "value": "It is day."},
        ],
        [{"from": "human", "value": "<image>\nDescribe the scene."}, {"from": "gpt", "value": "Two people talk."}],
    ]
    batch = collator(
        [
            {"media": _video([0, 4, 8, 12], 10.0), "conversations": conversations[0]},
            {"media": _image(), "conversations": conversations[1]},
        ]
    )
    end = "\n###" if chat_format == "vicuna" else " </s>"
    prompt_end = "Assistant:" if chat_format == "vicuna" else "[/INST]"
    for row, conversation in enumerate(conversations):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        answers = [t["value"] for t in conversation if t["from"] == "gpt"]
        runs = _runs(labels)
        assert len(runs) == len(answers)
        for (start, stop), answer in zip(runs, answers):
            # every supervised token is the input token at that position (labels are not shifted) ...
            assert labels[start:stop] == ids[start:stop]
            # ... and the run is exactly the answer and its end-of-turn marker, preceded by the prompt's end
            assert tokenizer.decode(ids[start:stop]) == (answer + end).lstrip(" ")
            assert tokenizer.decode(ids[:start]).rstrip(" ").endswith(prompt_end)
        # never a placeholder, never padding
        supervised = {ids[i] for s, e in runs for i in range(s, e)}
        assert VIDEO_ID not in supervised and AUDIO_ID not in supervised
        n_real = int(batch["attention_mask"][row].sum())
        assert all(label == IGNORE_INDEX for label in labels[n_real:])
        assert n_real == len(ids) or ids[n_real:] == [tokenizer.pad_token_id] * (len(ids) - n_real)


def test_placeholders_and_media_tensors(tokenizer, tmp_path):
    processor = tiny_processor()
    data = load_training_data("jsonl", make_dataset(tmp_path, num_records=2, with_audio=True))
    batch = VideoLlamaDataCollator(processor)([data[0], data[1], data[2]])
    # two videos with their sound, one image: 3 visual inputs of 6 tokens, 2 audio tracks of 3 tokens
    assert batch["pixel_values_videos"].shape[:2] == (3, 4)
    assert batch["video_frames_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert batch["input_values"].shape[:2] == (2, 8)
    assert [(row == VIDEO_ID).sum().item() for row in batch["input_ids"]] == [6, 6, 6]
    assert [(row == AUDIO_ID).sum().item() for row in batch["input_ids"]] == [3, 3, 0]
    text = VideoLlamaDataCollator(processor).encode(data[0]).text
    assert text.startswith("\n\n###Human: Close your eyes, open your ears")


def test_caption_prompts_are_masked(tokenizer):
    processor = _processor(tokenizer, 6, 3)
    collator = VideoLlamaDataCollator(
        processor, caption_prompts=["<Image><ImageHere></Image> Describe this image in detail."], end_sym="###"
    )
    encoded = collator.encode({"media": _image(), "caption": "a brown dog"})
    supervised = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "a brown dog###"
    assert tokenizer.decode(encoded.input_ids[: -len(supervised)]).startswith("<s> ###Human: <Image>")
    assert tokenizer.decode(encoded.input_ids[: -len(supervised)]).endswith("###Assistant: ")


def test_blip_caption():
    assert blip_caption("A Dog: runs (fast)!!  on the GRASS.") == "a dog runs fast on the grass"
    assert len(blip_caption(" ".join(["w"] * 80)).split()) == 50


def test_bad_records_fail_clearly(tokenizer, tmp_path):
    collator = VideoLlamaDataCollator(_processor(tokenizer, 6, 3))
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        collator(
            [{"id": "x", "media": str(tmp_path / "missing.mp4"), "conversations": [{"from": "human", "value": "q"}]}]
        )
    with pytest.raises(ValueError, match="start with a user"):
        collator([{"media": _image(), "conversations": [{"from": "gpt", "value": "a"}]}])
    with pytest.raises(ValueError, match="max_length=12 cut through the media"):
        VideoLlamaDataCollator(_processor(tokenizer, 6, 3), max_length=12)(
            [
                {
                    "media": _video([0, 1], 1.0),
                    "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                }
            ]
        )
    with pytest.raises(ValueError, match="contains <video> but the record has no video"):
        collator([{"conversations": [{"from": "human", "value": "<video> q"}, {"from": "gpt", "value": "a"}]}])
    with pytest.raises(ValueError, match="label_masking"):
        VideoLlamaDataCollator(_processor(tokenizer, 6, 3), label_masking="everything")
