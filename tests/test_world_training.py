"""Training from scratch: the LLaMA-convention tokenizer trainer and the collator's chat-template prompt format."""

import json

import pytest
import torch
from transformers import AutoTokenizer

import transformers_videollama as tv
from transformers_videollama import world_videollama as world
from transformers_videollama.collator_videollama import IGNORE_INDEX


TEXTS = [
    "###Human: What colour is the object?###Assistant: red###",
    "Close your eyes, open your ears and you imagine only based on the sound that: a high tone.                 ",
    "The video contains 8 frames sampled at 0.0, 0.4, 0.8 seconds.  How is the circle moving?###Assistant: "
    "moving left###",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return tv.train_videollama_tokenizer(TEXTS, vocab_size=330, min_frequency=1)


def test_tokenizer_follows_llama_conventions(tokenizer, tmp_path):
    assert [tokenizer.convert_ids_to_tokens(i) for i in (0, 1, 2, 3, 258)] == [
        "<unk>",
        "<s>",
        "</s>",
        "<0x00>",
        "<0xFF>",
    ]
    assert tokenizer.pad_token_id == tokenizer.unk_token_id == 0
    base = len(tokenizer) - 2
    assert tokenizer.convert_tokens_to_ids(["<ImageHere>", "<AudioHere>"]) == [base, base + 1]
    text = "###Human: <Video><ImageHere><ImageHere></Video> red###  Ünï 42"
    ids = tokenizer(text).input_ids
    assert ids[0] == 1 and ids.count(base) == 2
    # legacy LLaMA: the text after the placeholders gets its own "▁" prefix, which decodes as a space
    assert tokenizer.decode(ids, skip_special_tokens=True) == "###Human: <Video> </Video> red###  Ünï 42"
    assert "<unk>" not in tokenizer.convert_ids_to_tokens(ids)  # unseen characters fall back to bytes
    # the turn separator never merges with the word before it, so "#" is a single stop id
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("red###").input_ids)
    assert pieces[-3:] == ["#", "#", "#"]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text).input_ids == ids


def test_tokenizer_rejects_too_small_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        tv.train_videollama_tokenizer(TEXTS, vocab_size=200)


@pytest.fixture(scope="module")
def world_videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    world.generate_split(out, "train", 6, seed=1)
    scenes = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    with_audio = next(s for s in scenes if s["sound"] is not None)
    return out, with_audio


@pytest.fixture(scope="module")
def processor(tokenizer):
    return tv.VideoLlamaProcessor(
        video_processor=tv.VideoLlamaVideoProcessor(size={"height": 32, "width": 32}),
        feature_extractor=tv.VideoLlamaFeatureExtractor(),
        tokenizer=tokenizer,
        num_video_query_tokens=4,
        num_audio_query_tokens=2,
        chat_template="vicuna",
    )


def _colour_record(video: str, *more_turns: dict) -> dict:
    """A training record about `video` with its sound: "What colour is the object?" -> "red", then `more_turns`."""
    turns = [{"from": "human", "value": "What colour is the object?"}, {"from": "gpt", "value": "red"}]
    return {"video": video, "audio": True, "conversations": turns + list(more_turns)}


def test_chat_template_format_trains_on_the_inference_prompt(tokenizer, processor, world_videos):
    out, scene = world_videos
    video = str(out / "videos" / f"{scene['id']}.mp4")
    record = _colour_record(
        video, {"from": "human", "value": "What do you hear?"}, {"from": "gpt", "value": "a high tone"}
    )
    collator = tv.VideoLlamaDataCollator(processor, prompt_format="chat_template")
    encoded = collator.encode(record)
    # the text up to the first answer is exactly the prompt the processor renders for the same request
    request = [
        {
            "role": "user",
            "content": [{"type": "video", "path": video}, {"type": "text", "text": "What colour is the object?"}],
        }
    ]
    prompt = processor.apply_chat_template(request, add_generation_prompt=True, load_audio_from_video=True)
    expanded = prompt.replace("<ImageHere>", "<ImageHere>" * 4).replace("<AudioHere>", "<AudioHere>" * 2)
    assert encoded.text.startswith(expanded + " red###Human: What do you hear?###Assistant: a high tone###")
    request_ids = processor(text=prompt, videos=[video], audio=[video])["input_ids"][0].tolist()
    assert encoded.input_ids[: len(request_ids)] == request_ids
    supervised = tokenizer.decode([i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    assert supervised.replace(" ", "") == "red###ahightone###"
    batch = collator([record, dict(record, audio=False)])
    assert batch["pixel_values_videos"].shape == (2, 8, 3, 32, 32)
    assert batch["input_values"].shape[0] == 1  # only the first record hears the sound
    assert (batch["labels"] != IGNORE_INDEX).any(dim=1).all()
    assert torch.equal(batch["attention_mask"].sum(1) > 0, torch.tensor([True, True]))
    # a sound without a picture: the audio sentence, no video placeholders
    heard = collator.encode({"audio": video, "conversations": record["conversations"][:2]})
    assert heard.input_ids.count(processor.tokenizer.convert_tokens_to_ids("<AudioHere>")) == 2
    assert heard.input_ids.count(processor.tokenizer.convert_tokens_to_ids("<ImageHere>")) == 0
    assert heard.text.startswith("###Human: Close your eyes, open your ears")


def test_chat_template_format_refuses_what_it_cannot_render(processor, world_videos):
    out, scene = world_videos
    collator = tv.VideoLlamaDataCollator(processor, prompt_format="chat_template")
    video = str(out / "videos" / f"{scene['id']}.mp4")
    with pytest.raises(ValueError, match="conversations"):
        collator.encode({"video": video, "caption": "a red circle"})
    with pytest.raises(ValueError, match="<video>"):
        collator.encode({"video": video, "conversations": [{"from": "human", "value": "<video> what?"}]})
    with pytest.raises(ValueError, match="prompt_format"):
        tv.VideoLlamaDataCollator(processor, prompt_format="demo")
    with pytest.raises(ValueError, match="label_masking='answers' only"):
        tv.VideoLlamaDataCollator(processor, prompt_format="chat_template", label_masking="original")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collator.encode({"video": "missing.mp4", "conversations": [{"from": "human", "value": "hi"}]})
    silent = world.write_video(
        world.Scene(objects=[world.SceneObject("red", "circle", "left", (0.7, 0.5), 0.3)], sound=None),
        out / "no_track.mp4",
    )
    record = {
        "video": str(silent),
        "audio": True,
        "conversations": [{"from": "human", "value": "What do you hear?"}, {"from": "gpt", "value": "x"}],
    }
    with pytest.raises(ValueError, match="no audio track"):
        collator.encode(record)  # the record asks for a sound track the file does not have


def test_chat_template_renderings_are_kept_per_what_the_template_reads(processor, world_videos):
    # Rendering the chat template is ~20 % of collating a batch; the collator keeps each record's rendered ids and
    # labels, keyed by what the template reads (texts, block types, timestamp sentence, audio decisions).
    out, scene = world_videos
    video = str(out / "videos" / f"{scene['id']}.mp4")
    record = _colour_record(video)
    collator = tv.VideoLlamaDataCollator(processor, prompt_format="chat_template")
    first, again = collator.encode(record), collator.encode(dict(record))
    assert (again.input_ids, again.labels, again.text) == (first.input_ids, first.labels, first.text)
    assert len(collator._rendered) == 1
    fresh = tv.VideoLlamaDataCollator(processor, prompt_format="chat_template").encode(record)
    assert (fresh.input_ids, fresh.labels, fresh.text) == (first.input_ids, first.labels, first.text)
    # without the sound, and for a video of another length and frame rate (another timestamp sentence): new texts
    mute = collator.encode(dict(record, audio=False))
    other = world.Scene(objects=[world.SceneObject("red", "circle", "left", (0.7, 0.5), 0.3)], sound=None)
    other.fps, other.duration = 15, 2.0
    slower = collator.encode(dict(record, audio=False, video=str(world.write_video(other, out / "fps15.mp4"))))
    assert len(collator._rendered) == 3
    assert "<AudioHere>" not in mute.text and mute.text != slower.text
    assert (
        processor.video_processor.load(video).metadata.fps
        != processor.video_processor.load(str(out / "fps15.mp4")).metadata.fps
    )
    for encoded in (mute, slower):
        assert len(encoded.videos) == 1 and encoded.audios == []
