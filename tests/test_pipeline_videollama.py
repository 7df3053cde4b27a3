"""The video-text-to-text pipeline (chat messages, text + videos, audio, batching, options) and the stock
image-text-to-text / any-to-any pipelines with chat messages."""

import pytest
import torch
from _fixture_a_chat import VIDEO_PROMPTS, chat_template, conversation, convert_fixture_a, greedy_reference
from _videollama_media import MEDIA
from transformers import pipeline
from transformers.utils import logging as hf_logging

from transformers_videollama import VideoTextToTextPipeline


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return convert_fixture_a(tmp_path_factory.mktemp("fixture_a"))


@pytest.fixture(scope="module")
def pipe(folder):
    return pipeline("video-text-to-text", model=str(folder), dtype=torch.float32)


VIDEO = str(MEDIA / "dog_barking.mp4")
IMAGE = str(MEDIA / "dog.jpg")
SILENT = str(MEDIA / "birthday.mp4")


def _user(*blocks, text="What is happening?"):
    return [{"role": "user", "content": [*blocks, {"type": "text", "text": text}]}]


def test_task_is_registered_in_process(pipe):
    assert isinstance(pipe, VideoTextToTextPipeline)


@pytest.mark.parametrize("name", VIDEO_PROMPTS)
def test_pipeline_reproduces_the_original_greedy_ids(pipe, name):
    chats = [conversation(name, 0), conversation(name, 1)]
    outputs = pipe(
        text=chats,
        batch_size=2,
        chat_template=chat_template(name),
        max_new_tokens=6,
        generate_kwargs={"min_new_tokens": 6, "do_sample": False},
        return_tensors=True,
        progress_bar=False,
    )
    ids = torch.stack([out[0]["generated_token_ids"] for out in outputs])
    assert torch.equal(ids, greedy_reference(name))


def test_chat_messages_text_and_videos_and_raw_prompts_agree(pipe):
    kwargs = {"max_new_tokens": 5, "num_frames": 4, "generate_kwargs": {"do_sample": False}}
    chat = pipe(text=_user({"type": "video", "path": VIDEO}), return_full_text=False, **kwargs)
    assert chat[0]["input_text"][0]["role"] == "user" and isinstance(chat[0]["generated_text"], str)
    # a plain question with videos= becomes the same demo prompt
    question = pipe(text="What is happening?", videos=VIDEO, return_full_text=False, **kwargs)
    assert question[0]["generated_text"] == chat[0]["generated_text"]
    # a hand-written prompt with placeholders is used as is
    prompt = pipe.processor.apply_chat_template(
        _user({"type": "video", "path": VIDEO}), add_generation_prompt=True, processor_kwargs={"num_frames": 4}
    )
    raw = pipe(text=prompt, videos=VIDEO, return_full_text=False, **kwargs)
    assert raw[0]["generated_text"] == chat[0]["generated_text"]
    # return_full_text: the conversation with the new assistant message / the prompt followed by the answer
    full = pipe(text=_user({"type": "video", "path": VIDEO}), **kwargs)[0]["generated_text"]
    assert full[-1] == {"role": "assistant", "content": chat[0]["generated_text"]}
    assert pipe(text="What is happening?", videos=VIDEO, **kwargs)[0]["generated_text"].startswith(
        "What is happening?"
    )


def test_audio_from_videos_and_explicit_audio(pipe):
    calls = []
    handle = pipe.model.model.audio_tower.register_forward_hook(lambda *_: calls.append(1))
    try:
        kwargs = {"max_new_tokens": 3, "num_frames": 4, "return_full_text": False}
        with_track = pipe(text=_user({"type": "video", "path": VIDEO}), load_audio_from_video=True, **kwargs)
        assert len(calls) == 1
        plain = pipe(text="What is happening?", videos=VIDEO, load_audio_from_video=True, **kwargs)
        assert len(calls) == 2 and plain[0]["generated_text"] == with_track[0]["generated_text"]
        explicit = pipe(text="What is happening?", videos=VIDEO, audio=VIDEO, **kwargs)
        assert len(calls) == 3 and explicit[0]["generated_text"] == with_track[0]["generated_text"]
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def decoded_media(pipe):
    """Media decoded once (the batch test makes many calls); the processor accepts them in place of paths."""
    load = pipe.processor.video_processor.load
    return {
        "video": load(VIDEO, num_frames=4),
        "short": load(SILENT, num_frames=3),
        "image": load(IMAGE),
        "audio": pipe.processor.feature_extractor.fetch_audio(VIDEO),
    }


def test_batches_equal_single_calls_and_show_progress(pipe, decoded_media, capsys):
    media = decoded_media
    chats = [
        _user({"type": "video", "video": media["video"]}, {"type": "audio", "audio": media["audio"]}),
        _user({"type": "image", "image": media["image"]}, text="What is in the picture, in detail?"),
        [{"role": "user", "content": "Hello"}],
        _user({"type": "video", "video": media["short"]}),
    ]
    kwargs = {"max_new_tokens": 4, "return_full_text": False}
    singles = [pipe(text=chat, **kwargs)[0]["generated_text"] for chat in chats]
    capsys.readouterr()
    batched = pipe(text=chats, batch_size=4, **kwargs)
    assert [out[0]["generated_text"] for out in batched] == singles
    assert "Video-LLaMA" in capsys.readouterr().err  # a progress bar over the inputs
    pipe(text=chats[1:3], batch_size=2, progress_bar=False, **kwargs)
    assert "Video-LLaMA" not in capsys.readouterr().err
    hf_logging.disable_progress_bar()
    try:
        pipe(text=chats[1:3], batch_size=2, **kwargs)
        assert "Video-LLaMA" not in capsys.readouterr().err
    finally:
        hf_logging.enable_progress_bar()
    # several questions with one video / image each, in one call
    many = pipe(text=["What is happening?", "What is happening?"], videos=[media["short"], media["image"]], **kwargs)
    image_alone = pipe(text=_user({"type": "image", "image": media["image"]}), **kwargs)[0]["generated_text"]
    assert [out["generated_text"] for out in many] == [singles[3], image_alone]


def test_bad_inputs_name_the_argument(pipe):
    with pytest.raises(ValueError, match="one video"):
        pipe(text=["a?", "b?"], videos=[VIDEO, VIDEO, VIDEO], max_new_tokens=2)
    with pytest.raises(ValueError, match="`text`"):
        pipe(videos=VIDEO, max_new_tokens=2)


@pytest.mark.parametrize("task", ["image-text-to-text", "any-to-any"])
def test_stock_pipelines_with_chat_messages(folder, pipe, task):
    stock = pipeline(task, model=str(folder), dtype=torch.float32)
    messages = _user({"type": "image", "path": IMAGE})
    out = stock(text=messages, max_new_tokens=4, return_full_text=False, generate_kwargs={"do_sample": False})
    ours = pipe(text=messages, max_new_tokens=4, return_full_text=False, generate_kwargs={"do_sample": False})
    # the stock pipelines keep the stop token text; the answer is the same up to it
    assert out[0]["generated_text"].strip().startswith(ours[0]["generated_text"])
