"""generate(): parity with the original through the processor, encoders once per call, batching, decoding modes,
streaming, stop rules, placeholders, and multi-turn chat that reuses the cache and the encoded media."""

import threading

import pytest
import torch
from _fixture_a_chat import (
    PROMPTS,
    chat_template,
    conversation,
    convert_fixture_a,
    decoded,
    greedy_reference,
    original_ids,
    processor_inputs,
)
from _reference import REFERENCE_DIR, reference_inputs
from _videollama_media import MEDIA
from transformers import TextIteratorStreamer

from transformers_videollama import VideoLlamaChat, VideoLlamaForConditionalGeneration, VideoLlamaProcessor
from transformers_videollama.convert_videollama_weights_to_hf import _generation_config
from transformers_videollama.media_io_videollama import AudioTrack
from transformers_videollama.pipeline_videollama import answer_from_ids


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return convert_fixture_a(tmp_path_factory.mktemp("fixture_a"))


@pytest.fixture(scope="module")
def model(folder):
    return VideoLlamaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def processor(folder):
    return VideoLlamaProcessor.from_pretrained(folder)


class EncoderCalls:
    """Counts forward calls of the vision and audio towers (the expensive encoders)."""

    def __init__(self, model):
        self.counts = {"vision": 0, "audio": 0}
        self._handles = [
            model.model.vision_tower.register_forward_hook(self._hook("vision")),
            model.model.audio_tower.register_forward_hook(self._hook("audio")),
        ]

    def _hook(self, name):
        def hook(*_):
            self.counts[name] += 1

        return hook

    def __enter__(self):
        return self.counts

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()


@pytest.mark.parametrize("name", PROMPTS)
@torch.no_grad()
def test_processor_to_generate_reproduces_the_original_greedy_ids(model, processor, name):
    inputs = processor_inputs(processor, name)
    # the processor lays the prompt out exactly as the original demo's segment-by-segment tokenisation
    assert inputs["input_ids"].tolist() == [original_ids(name)] * 2
    assert torch.equal(
        inputs["pixel_values_videos"],
        reference_inputs()["image" if "image" in name else "video"].permute(0, 2, 1, 3, 4),
    )
    generated = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    new_tokens = generated[:, inputs["input_ids"].shape[1] :]
    assert torch.equal(new_tokens, greedy_reference(name)), f"{name}: {new_tokens.tolist()}"


@pytest.fixture(scope="module")
def media(processor):
    """Real media, decoded once: a video with sound, a still image, a silent video of another length."""
    load = processor.video_processor.load
    track = processor.feature_extractor.fetch_audio(str(MEDIA / "dog_barking.mp4"))
    two_seconds = AudioTrack(track.waveform[:, : 2 * track.sample_rate], track.sample_rate, "dog_barking (2 s)")
    return {
        "video": load(str(MEDIA / "dog_barking.mp4"), num_frames=4),
        "image": load(str(MEDIA / "dog.jpg")),
        "short": load(str(MEDIA / "birthday.mp4"), num_frames=3),
        "audio": two_seconds,  # short, so that the many processor calls stay fast
    }


def _chat(*blocks, text="What is happening?"):
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": text}]}]


def _conversations(media):
    video = {"type": "video", "video": media["video"]}
    return {
        "video": _chat(video),
        "image": _chat({"type": "image", "image": media["image"]}),
        "audio": _chat({"type": "audio", "audio": media["audio"]}),
        "audio+video": _chat(video, {"type": "audio", "audio": media["audio"]}),
        "text-only": [{"role": "user", "content": "Hello, who are you?"}],
        "short video": _chat({"type": "video", "video": media["short"]}, text="And this one, in a few words?"),
    }


def _inputs(processor, conversations):
    return processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        processor_kwargs={"padding": True, "padding_side": "left"},
    )


@pytest.fixture(scope="module")
def audio_video_pair(processor, media):
    return _inputs(processor, [_conversations(media)["audio+video"]] * 2)


@pytest.mark.parametrize(
    "mode",
    [
        {"do_sample": False},
        {"do_sample": True, "top_p": 0.9, "temperature": 1.0},
        {"num_beams": 3, "do_sample": False},
        {"num_beams": 2, "num_return_sequences": 2, "do_sample": False},
    ],
    ids=["greedy", "sampling", "beam", "beam-2-sequences"],
)
@torch.no_grad()
def test_encoders_run_once_per_generate_call(model, audio_video_pair, mode):
    inputs = audio_video_pair
    assert inputs["pixel_values_videos"].shape[0] == 2 and inputs["input_values"].shape[0] == 2
    with EncoderCalls(model) as calls:
        out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, **mode)
    assert calls == {"vision": 1, "audio": 1}
    assert out.shape == (2 * mode.get("num_return_sequences", 1), inputs["input_ids"].shape[1] + 5)


@torch.no_grad()
def test_every_input_kind_and_batched_greedy_equals_per_item(model, processor, media):
    conversations = _conversations(media)
    per_item = {}
    for name, conv in conversations.items():
        inputs = _inputs(processor, conv)
        with EncoderCalls(model) as calls:
            out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        assert calls["vision"] == int("pixel_values_videos" in inputs) and calls["audio"] == int(
            "input_values" in inputs
        )
        per_item[name] = out[0, inputs["input_ids"].shape[1] :]

    # one batch: different prompts and lengths (left padding), images and videos of 1/3/4 frames, audio for some
    batch = _inputs(processor, list(conversations.values()))
    assert batch["attention_mask"].min() == 0 and batch["attention_mask"][:, -1].all()  # left-padded
    assert batch["pixel_values_videos"].shape[:2] == (4, 4) and batch["input_values"].shape[0] == 2
    with EncoderCalls(model) as calls:
        out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert calls == {"vision": 1, "audio": 1}
    for row, name in enumerate(conversations):
        assert torch.equal(out[row, batch["input_ids"].shape[1] :], per_item[name]), name


@torch.no_grad()
def test_beam_search_keeps_each_samples_audio_tracks_together(model, processor, media):
    """Two audio tracks in one sample, one in the other: beam expansion must not interleave them."""
    audio = {"type": "audio", "audio": media["audio"]}
    quiet = {"type": "audio", "audio": AudioTrack(media["audio"].waveform[:, ::2] * 0.1, 16000, "quiet")}
    conversations = [_chat(audio, {"type": "text", "text": "and"}, quiet), _chat(quiet)]
    singles = [
        model.generate(**_inputs(processor, conv), max_new_tokens=4, min_new_tokens=4, num_beams=2)
        for conv in conversations
    ]
    batch = _inputs(processor, conversations)
    out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, num_beams=2)
    for row, single in enumerate(singles):
        assert torch.equal(out[row, -4:], single[0, -4:])


@torch.no_grad()
def test_placeholders_can_never_be_generated(model, audio_video_pair):
    config = model.config
    assert model.lm_head.out_features == config.text_config.vocab_size
    assert min(config.video_token_index, config.audio_token_index) >= config.text_config.vocab_size
    inputs = audio_video_pair
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=20, min_new_tokens=20, do_sample=True, temperature=5.0)
    assert out[:, inputs["input_ids"].shape[1] :].max() < config.text_config.vocab_size


@torch.no_grad()
def test_streaming_with_text_iterator_streamer(model, processor, audio_video_pair):
    inputs = {k: v[:1] for k, v in audio_video_pair.items()}
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    kwargs = dict(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, streamer=streamer)
    thread = threading.Thread(target=lambda: result.setdefault("ids", model.generate(**kwargs)))
    thread.start()
    pieces = list(streamer)
    thread.join()
    expected = processor.tokenizer.decode(result["ids"][0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(pieces) >= 1 and "".join(pieces).strip() == expected.strip()


def test_stop_rules_of_the_original_are_in_generation_config(folder, processor):
    """Vicuna stops at `###` (its single-token spellings), LLaMA-2 at `</s>`; both shipped in generation_config.json."""
    vocab = processor.tokenizer.get_vocab()
    vicuna = _generation_config(REFERENCE_DIR / "llama", "vicuna")
    assert set(vicuna.eos_token_id) == {2, vocab["###"], vocab["\u2581###"]}
    assert _generation_config(REFERENCE_DIR / "llama", "llama2").eos_token_id == 2
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(folder).eos_token_id == vicuna.eos_token_id
    # answers are cut at the separator, as the original's `split('###')[0]`
    ids = processor.tokenizer("The dog barks.###Human: next", add_special_tokens=False).input_ids
    assert answer_from_ids(ids, processor.tokenizer, vicuna) == "The dog barks."


@torch.no_grad()
def test_multi_turn_chat_reuses_cache_and_media(model, processor, media):
    chat = VideoLlamaChat(model, processor, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    with EncoderCalls(model) as calls:
        first = chat.ask(
            [
                {"type": "video", "video": media["video"]},
                {"type": "audio", "audio": media["audio"]},
                {"type": "text", "text": "What is happening?"},
            ]
        )
    assert calls == {"vision": 1, "audio": 1} and isinstance(first, str)
    turn_one_length = chat._ids.shape[1]

    with EncoderCalls(model) as calls:
        second = chat.ask("Describe it in more detail.")
    assert calls == {"vision": 0, "audio": 0}  # nothing seen before is encoded again
    # the cache of the whole first request (media and prompt) is reused: at most the re-tokenised answer (6 tokens)
    # and the new question are prefilled
    assert chat.last_prefill_length <= chat._ids.shape[1] - 6 - (turn_one_length - 6)

    # the same answer as a stateless request on the whole conversation
    conversation = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": media["video"]},
                {"type": "audio", "audio": media["audio"]},
                {"type": "text", "text": "What is happening?"},
            ],
        },
        {"role": "assistant", "content": first},
        {"role": "user", "content": [{"type": "text", "text": "Describe it in more detail."}]},
    ]
    inputs = _inputs(processor, conversation)
    assert inputs["input_ids"].shape[1] + 6 == chat._ids.shape[1]
    fresh = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(fresh, chat._ids)
    assert second == answer_from_ids(
        fresh[0, inputs["input_ids"].shape[1] :], processor.tokenizer, model.generation_config
    )

    # a new video in a later turn: only that one is encoded
    with EncoderCalls(model) as calls:
        chat.ask([{"type": "image", "image": media["image"]}, {"type": "text", "text": "And this picture?"}])
    assert calls == {"vision": 1, "audio": 0}


@torch.no_grad()
def test_generate_on_the_fixture_prompt_with_a_decoded_video_list(model, processor):
    """`processor(text=..., videos=[DecodedVideo])` with a hand-written prompt is the same request as the chat path."""
    prompt = processor.apply_chat_template(
        conversation("vicuna_video", 0), chat_template=chat_template("vicuna_video"), add_generation_prompt=True
    )
    inputs = processor(text=prompt, videos=[decoded(0)])
    out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(out[:, inputs["input_ids"].shape[1] :], greedy_reference("vicuna_video")[:1])
