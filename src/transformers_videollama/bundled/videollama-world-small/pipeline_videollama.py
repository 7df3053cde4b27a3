# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""Chat with a video: the `video-text-to-text` pipeline and a multi-turn chat session for Video-LLaMA.

transformers has no `video-text-to-text` task. `VideoTextToTextPipeline` is the stock `any-to-any` pipeline with the
parts that do not fit Video-LLaMA replaced:

* no torchvision requirement (our processors decode with PyAV);
* plain questions (`text="What is happening?", videos="dog.mp4"`) are wrapped into the demo chat format, so they get
  the original prompt with its frame timestamps; text that already holds `<ImageHere>` / `<AudioHere>` is used as is;
* batches are collated here (left padding; videos with different frame counts; audio for some items only), because
  the stock collate function pads every tensor as if it were token ids;
* answers are cut at the checkpoint's stop rule (Vicuna `###`, LLaMA-2 `</s>`), as the original demo did.

`VideoLlamaChat` keeps one conversation: each turn reuses the KV cache of everything said before and the features of
every video / audio already seen, so a follow-up question runs neither encoder and only prefills its new tokens.

This module is copied into exported Hub folders (remote code): it imports siblings only as `from .x import Y`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.pipelines.any_to_any import AnyToAnyPipeline, ReturnType
from transformers.pipelines.base import Pipeline, PipelineDataset, PipelineIterator
from transformers.utils import logging

from .processing_videollama import AUDIO_TOKEN, VIDEO_TOKEN


logger = logging.get_logger(__name__)

__all__ = ["VideoLlamaChat", "VideoTextToTextPipeline", "answer_from_ids", "stop_token_ids"]

TASK = "video-text-to-text"


def stop_token_ids(generation_config: GenerationConfig) -> list[int]:
    """The ids that end an answer (`eos_token_id`, one or several), as a list."""
    eos = generation_config.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def answer_from_ids(new_ids: torch.Tensor | list[int], tokenizer: Any, generation_config: GenerationConfig) -> str:
    """The answer text of freshly generated ids, cleaned as the original demo's `Chat.answer` did.

    Generation stops at an end-of-sequence id; Vicuna checkpoints list the `###` token among them (their turn
    separator), which is not a special token and would otherwise end up in the text. The ids are cut at the first
    stop id, decoded without special tokens, and also cut at the text of non-special stop tokens (the original
    stopped on the two-token spelling `##` + `#` as well), then stripped.
    """
    ids = new_ids.tolist() if isinstance(new_ids, torch.Tensor) else list(new_ids)
    stops = stop_token_ids(generation_config)
    for index, token in enumerate(ids):
        if token in stops:
            ids = ids[:index]
            break
    text = tokenizer.decode(ids, skip_special_tokens=True)
    special = set(getattr(tokenizer, "all_special_ids", []))
    for stop in stops:
        if stop not in special:
            stop_text = tokenizer.decode([stop]).strip()
            if stop_text:
                text = text.split(stop_text)[0]
    return text.strip()


def _messages(item: Any) -> list[dict] | None:
    """The messages of a chat input (`Chat` objects of transformers' pipelines hold them in `.messages`)."""
    return getattr(item, "messages", None)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class VideoTextToTextPipeline(AnyToAnyPipeline):
    """Answer questions about videos, images and sounds with a Video-LLaMA checkpoint.

    Inputs (each call takes one of these, or a list of them for a batch):

    * chat messages, as for `image-text-to-text`: `{"type": "video" | "image" | "audio", "path" | "url" | ...: ...}`
      and `{"type": "text", "text": ...}` blocks; `load_audio_from_video=True` adds each video's sound track;
    * `text=` (a question, or a prompt with `<ImageHere>` / `<AudioHere>` placeholders) with `videos=` (videos or
      images: paths, bytes, arrays, `DecodedVideo`s), `images=` and `audio=`.

    Arguments at call time: `max_new_tokens`, `generate_kwargs`, `return_full_text` (default `True`: the prompt or
    the conversation with the new assistant message), `return_tensors`, `load_audio_from_video`, `num_frames`,
    `fps`, `chat_template` (`"vicuna"` / `"llama2"`), `batch_size`, and `progress_bar` (for lists of inputs;
    `transformers.utils.logging.disable_progress_bar()` silences it too).

    Example:

    ```python
    >>> from transformers import pipeline
    >>> pipe = pipeline("video-text-to-text", model="path/to/video-llama-2-7b-hf", trust_remote_code=True)
    >>> messages = [{"role": "user", "content": [{"type": "video", "path": "dog.mp4"},
    ...                                          {"type": "text", "text": "What is the dog doing?"}]}]
    >>> pipe(text=messages, max_new_tokens=64, return_full_text=False, load_audio_from_video=True)
    [{'input_text': [...], 'generated_text': '...'}]
    ```
    """

    _default_generation_config = GenerationConfig(max_new_tokens=256)

    def __init__(self, *args: Any, **kwargs: Any):
        # Skip AnyToAnyPipeline.__init__: it requires torchvision for video models and checks the model against the
        # built-in multimodal mapping, which does not know remote-code models.
        Pipeline.__init__(self, *args, **kwargs)
        if not hasattr(self.model, "get_video_features"):
            raise ValueError(
                f"The {TASK!r} pipeline needs a Video-LLaMA model (with `get_video_features`), got "
                f"{type(self.model).__name__}."
            )
        self._progress_bar: bool | None = None

    # ------------------------------------------------------------------------------------------------------------
    # Parameters
    # ------------------------------------------------------------------------------------------------------------

    def _sanitize_parameters(
        self,
        load_audio_from_video: bool | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        chat_template: str | None = None,
        audio_fallback: str | None = None,
        **kwargs: Any,
    ):
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        for name, value in (
            ("load_audio_from_video", load_audio_from_video),
            ("num_frames", num_frames),
            ("fps", fps),
            ("chat_template", chat_template),
            ("audio_fallback", audio_fallback),
        ):
            if value is not None:
                preprocess_params[name] = value
        return preprocess_params, forward_params, postprocess_params

    def __call__(
        self,
        text: Any = None,
        images: Any = None,
        videos: Any = None,
        audio: Any = None,
        progress_bar: bool | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """See the class docstring. A list of chats (or of input dicts) is a batch; `batch_size` groups them."""
        self._progress_bar = progress_bar
        if text is None and images is None and videos is None and audio is None:
            raise ValueError("Pass `text` (a question, a prompt or chat messages) and optionally `videos`/`audio`.")
        if isinstance(text, (list, tuple)) and text and all(isinstance(t, dict) and "role" not in t for t in text):
            # a list of {"text": ..., "videos": ...} dicts is a batch of inputs
            return Pipeline.__call__(self, list(text), **kwargs)
        is_chat = isinstance(text, (list, tuple)) and text and isinstance(text[0], (dict, list, tuple))
        if is_chat or hasattr(text, "messages"):
            return super().__call__(text=text, images=images, videos=videos, audio=audio, **kwargs)
        # Plain text (+ media) is wrapped into the chat format in `preprocess`, so skip the stock "use chats" warning.
        return Pipeline.__call__(self, {"text": text, "images": images, "videos": videos, "audio": audio}, **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # Preprocessing
    # ------------------------------------------------------------------------------------------------------------

    def preprocess(
        self,
        inputs: Any = None,
        timeout: float | None = None,
        continue_final_message: bool | None = None,
        load_audio_from_video: bool = False,
        num_frames: int | None = None,
        fps: float | None = None,
        chat_template: str | None = None,
        audio_fallback: str | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        **processing_kwargs: Any,
    ) -> dict[str, Any]:
        processor_kwargs = {**processing_kwargs, **(processor_kwargs or {})}
        if num_frames is not None:
            processor_kwargs["num_frames"] = num_frames
        if fps is not None:
            processor_kwargs["fps"] = fps
        chat_kwargs = {
            "load_audio_from_video": load_audio_from_video,
            "chat_template": chat_template,
            "audio_fallback": audio_fallback,
        }

        messages = _messages(inputs)
        if messages is not None:
            if continue_final_message is None:
                continue_final_message = messages[-1]["role"] == "assistant"
            model_inputs = self._from_chats([messages], processor_kwargs, chat_kwargs, continue_final_message)
            model_inputs["text"] = inputs
            return model_inputs

        if isinstance(inputs, str):
            inputs = {"text": inputs}
        if not isinstance(inputs, dict):
            raise ValueError(
                f"Unsupported input {type(inputs).__name__}: pass chat messages, a string, or text= with videos=."
            )
        texts = _as_list(inputs.get("text"))
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("`text` must be a string or a list of strings (or chat messages).")
        videos = _as_list(inputs.get("videos")) + _as_list(inputs.get("images"))
        audios = _as_list(inputs.get("audio"))
        prompt_text = texts[0] if isinstance(inputs.get("text"), str) else texts

        if any(VIDEO_TOKEN in t or AUDIO_TOKEN in t for t in texts):
            # A ready-made prompt: placeholders say where the media go.
            if load_audio_from_video and not audios:
                audios = [v for v in videos if not _is_image(v)]
            processor_kwargs.setdefault("padding", len(texts) > 1)
            processor_kwargs.setdefault("padding_side", "left")
            model_inputs = self.processor(text=texts, videos=videos or None, audio=audios or None, **processor_kwargs)
        else:
            # Plain questions: one user turn per question, in the checkpoint's demo format.
            chats = _question_chats(texts, videos, audios)
            model_inputs = self._from_chats(chats, processor_kwargs, chat_kwargs, False)
        model_inputs = model_inputs.to(dtype=self.dtype)
        model_inputs["text"] = prompt_text
        return model_inputs

    def _from_chats(
        self,
        chats: list[list[dict]],
        processor_kwargs: dict[str, Any],
        chat_kwargs: dict[str, Any],
        continue_final_message: bool,
    ) -> Any:
        processor_kwargs = dict(processor_kwargs)
        if len(chats) > 1:
            processor_kwargs.setdefault("padding", True)
            processor_kwargs.setdefault("padding_side", "left")
        chat_kwargs = {k: v for k, v in chat_kwargs.items() if v is not None}
        return self.processor.apply_chat_template(
            chats if len(chats) > 1 else chats[0],
            add_generation_prompt=not continue_final_message,
            continue_final_message=continue_final_message,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs=processor_kwargs,
            **chat_kwargs,
        ).to(dtype=self.dtype)

    # ------------------------------------------------------------------------------------------------------------
    # Batching
    # ------------------------------------------------------------------------------------------------------------

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ) -> Iterator:
        """The stock iterator with Video-LLaMA's collate function and a progress bar over the inputs."""
        if isinstance(inputs, Iterable) and hasattr(inputs, "__len__"):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
            total = len(inputs)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            total = None
        pad_id = self.processor.tokenizer.pad_token_id or 0
        collate = _first_item if batch_size == 1 else _MediaCollator(pad_id)
        loader = torch.utils.data.DataLoader(
            dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate
        )
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        final_iterator = PipelineIterator(model_iterator, self.postprocess, postprocess_params)
        show = self._progress_bar if self._progress_bar is not None else (total is None or total > 1)
        if not show:
            return final_iterator
        return logging.tqdm(final_iterator, total=total, desc="Video-LLaMA", unit="input")

    # ------------------------------------------------------------------------------------------------------------
    # Generation and output
    # ------------------------------------------------------------------------------------------------------------

    def _forward(self, model_inputs: dict[str, Any], generate_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        generate_kwargs = self._prepare_generate_kwargs(dict(generate_kwargs or {}))
        prompt_text = model_inputs.pop("text")
        input_ids = model_inputs["input_ids"]
        generated = self.model.generate(**model_inputs, **generate_kwargs)
        if not isinstance(generated, torch.Tensor):
            generated = generated.sequences
        new_tokens = generated[:, input_ids.shape[1] :]
        per_input = new_tokens.shape[0] // input_ids.shape[0]  # num_return_sequences
        return {
            "generated_sequence": new_tokens.reshape(input_ids.shape[0], per_input, -1),
            "prompt_text": prompt_text,
            "input_ids": input_ids,
        }

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        return_type: ReturnType | None = None,
        continue_final_message: bool | None = None,
        **postprocess_kwargs: Any,
    ) -> list[dict[str, Any]]:
        prompts = model_outputs["prompt_text"]
        prompts = prompts if isinstance(prompts, list) else [prompts]
        sequences = model_outputs["generated_sequence"]
        generation_config = self.model.generation_config
        records = []
        for prompt, candidates in zip(prompts, sequences):
            messages = _messages(prompt)
            input_text = messages if messages is not None else prompt
            for ids in candidates:
                if return_type == ReturnType.TENSORS:
                    records.append({"input_text": input_text, "generated_token_ids": ids})
                    continue
                answer = answer_from_ids(ids, self.processor.tokenizer, generation_config)
                if return_type == ReturnType.FULL_TEXT:
                    if messages is None:
                        answer = f"{prompt} {answer}"
                    elif continue_final_message or (
                        continue_final_message is None and messages[-1]["role"] == "assistant"
                    ):
                        last = copy.deepcopy(messages[-1])
                        if isinstance(last["content"], str):
                            last["content"] += " " + answer
                        else:
                            last["content"].append({"type": "text", "text": answer})
                        answer = [*messages[:-1], last]
                    else:
                        answer = [*messages, {"role": "assistant", "content": answer}]
                records.append({"input_text": input_text, "generated_text": answer})
        return records


def _is_image(source: Any) -> bool:
    kind = getattr(source, "kind", None)
    if kind is not None:
        return kind == "image"
    name = str(source).lower() if isinstance(source, str) else ""
    return name.endswith((".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"))


def _question_chats(texts: list[str], videos: list[Any], audios: list[Any]) -> list[list[dict]]:
    """Plain questions -> one user turn each. One question takes all media; several take one video (+ audio) each."""
    if len(texts) == 1:
        per_text_videos, per_text_audio = [videos], [audios]
    elif len(videos) in (0, len(texts)) and len(audios) in (0, len(texts)):
        per_text_videos = [[v] for v in videos] or [[] for _ in texts]
        per_text_audio = [[a] for a in audios] or [[] for _ in texts]
    else:
        raise ValueError(
            f"Got {len(texts)} questions, {len(videos)} videos/images and {len(audios)} audio inputs: with several "
            "questions pass one video (and optionally one audio) per question, or use chat messages."
        )
    chats = []
    for text, item_videos, item_audio in zip(texts, per_text_videos, per_text_audio):
        content = [{"type": "image" if _is_image(v) else "video", "video": v} for v in item_videos]
        content += [{"type": "audio", "audio": a} for a in item_audio]
        content.append({"type": "text", "text": text})
        chats.append([{"role": "user", "content": content}])
    return chats


def _first_item(items: list[Any]) -> Any:
    if len(items) != 1:
        raise ValueError("This collate function is meant to be used with batch_size=1")
    return items[0]


class _MediaCollator:
    """Stack preprocessed inputs into one generation batch.

    Token ids are left-padded (decoder-only generation continues on the right); videos of different lengths are
    zero-padded in time with `video_frames_mask` marking real frames; media tensors are concatenated in input order,
    which is the placeholder order across the batch (items without audio simply contribute none).
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        length = max(item["input_ids"].shape[1] for item in items)
        input_ids, attention_mask = [], []
        for item in items:
            ids = item["input_ids"]
            mask = item.get("attention_mask", torch.ones_like(ids))
            pad = length - ids.shape[1]
            input_ids.append(torch.nn.functional.pad(ids, (pad, 0), value=self.pad_token_id))
            attention_mask.append(torch.nn.functional.pad(mask, (pad, 0), value=0))
        batch: dict[str, Any] = {"input_ids": torch.cat(input_ids), "attention_mask": torch.cat(attention_mask)}

        videos = [item for item in items if item.get("pixel_values_videos") is not None]
        if videos:
            frames = max(item["pixel_values_videos"].shape[1] for item in videos)
            pixels, masks = [], []
            for item in videos:
                values = item["pixel_values_videos"]
                mask = item.get("video_frames_mask")
                if mask is None:
                    mask = torch.ones(values.shape[:2], dtype=torch.long)
                pad = frames - values.shape[1]
                pixels.append(torch.nn.functional.pad(values, (0, 0, 0, 0, 0, 0, 0, pad)))
                masks.append(torch.nn.functional.pad(mask, (0, pad)))
            batch["pixel_values_videos"] = torch.cat(pixels)
            batch["video_frames_mask"] = torch.cat(masks)
        audios = [item["input_values"] for item in items if item.get("input_values") is not None]
        if audios:
            batch["input_values"] = torch.cat(audios)
        batch["text"] = [item["text"] for item in items]
        return batch


class VideoLlamaChat:
    """A multi-turn conversation with a Video-LLaMA model that re-encodes nothing it has already seen.

    Every turn renders the whole conversation with the checkpoint's chat template and tokenises it exactly as a fresh
    request would. The key/value cache of the previous turn is then reused for the longest prefix of token ids the
    two requests share (usually everything up to the new question; the previous answer can re-tokenise differently,
    and then only the cache after the divergence is dropped), and each video / audio is decoded and encoded once: the
    features of earlier media are handed to `generate()` as pre-computed encoder outputs. The answers therefore equal
    those of a stateless call on the full conversation (up to float rounding), at the cost of the new tokens only.

    Args:
        model: a `VideoLlamaForConditionalGeneration`.
        processor: its `VideoLlamaProcessor`.
        chat_template (`str`, *optional*): `"vicuna"`, `"llama2"` or a Jinja template; the processor's default if unset.
        load_audio_from_video (`bool`, defaults to `False`): also hear each video's sound track.
        system (`str`, *optional*): a system message (the demo's defaults apply when unset).
        num_frames / fps (*optional*): frame sampling of the videos (default: the video processor's, 8 frames).
        **generate_kwargs: defaults for `generate()` (e.g. `max_new_tokens`, `do_sample`).

    Example:

    ```python
    >>> chat = VideoLlamaChat(model, processor, load_audio_from_video=True, max_new_tokens=64)
    >>> chat.ask([{"type": "video", "path": "dog.mp4"}, {"type": "text", "text": "What is happening?"}])
    >>> chat.ask("What sound does the dog make?")  # no encoder runs, only the new question is prefilled
    ```
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        chat_template: str | None = None,
        load_audio_from_video: bool = False,
        system: str | None = None,
        num_frames: int | None = None,
        fps: float | None = None,
        **generate_kwargs: Any,
    ):
        self.model = model
        self.processor = processor
        self.chat_template = chat_template
        self.load_audio_from_video = load_audio_from_video
        self.num_frames = num_frames
        self.fps = fps
        self.generate_kwargs = generate_kwargs
        self.messages: list[dict[str, Any]] = []  # with media decoded, as the processor prepared them
        if system is not None:
            self.messages.append({"role": "system", "content": system})
        self._features: dict[str, list[torch.Tensor]] = {"video": [], "audio": []}  # (Q, D) per item, in order
        self._ids: torch.Tensor | None = None  # (1, L) ids of the previous request incl. its answer
        self._cache: Any = None
        self.last_prefill_length: int | None = None  # tokens the last turn had to prefill (for inspection/tests)

    def ask(self, content: str | list[dict[str, Any]], **generate_kwargs: Any) -> str:
        """Add a user turn (text, or content blocks with media) and return the model's answer."""
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list) or not all(isinstance(b, dict) and "type" in b for b in content):
            raise ValueError("`content` must be a string or a list of content blocks with a 'type' key.")
        processor = self.processor
        (message,) = processor.prepare_conversation(
            [{"role": "user", "content": content}],
            self.load_audio_from_video,
            processor.audio_fallback,
            self.num_frames,
            self.fps,
        )
        self._encode_new_media(message)
        self.messages.append(message)

        # 1. the full request, tokenised as a stateless call would tokenise it
        prompt = processor.apply_chat_template(
            self.messages, add_generation_prompt=True, chat_template=self.chat_template
        )
        input_ids = self._tokenise(prompt)

        # 2. reuse the cache for the shared prefix (never cutting through a media placeholder run); beam search and
        #    several return sequences expand the batch, so they start from a fresh cache (media still encoded once)
        kwargs = {**self.generate_kwargs, **generate_kwargs}
        expands = max(kwargs.get("num_beams") or 1, kwargs.get("num_return_sequences") or 1) > 1
        start = 0 if expands else self._reusable_prefix(input_ids)
        mm_encoder_outputs = {}
        for modality, token_id, per_item in (
            ("video", self.model.config.video_token_index, self.model.config.num_video_query_tokens),
            ("audio", self.model.config.audio_token_index, self.model.config.num_audio_query_tokens),
        ):
            skipped = int((input_ids[0, :start] == token_id).sum()) // per_item
            features = self._features[modality][skipped:]
            if features:
                mm_encoder_outputs[modality] = BaseModelOutputWithPooling(pooler_output=torch.stack(features))
        kwargs = {**self.generate_kwargs, **generate_kwargs, "return_dict_in_generate": True}
        if start > 0:
            excess = self._cache.get_seq_length() - start
            if excess > 0:
                self._cache.crop(-excess)
            kwargs["cache"] = self._cache
        if mm_encoder_outputs:
            kwargs["mm_encoder_outputs"] = mm_encoder_outputs
        self.last_prefill_length = input_ids.shape[1] - start

        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
        self._ids, self._cache = output.sequences[:1], output.cache
        answer = answer_from_ids(
            output.sequences[0, input_ids.shape[1] :], processor.tokenizer, self.model.generation_config
        )
        self.messages.append({"role": "assistant", "content": answer})
        return answer

    def _tokenise(self, prompt: str) -> torch.Tensor:
        """Token ids of a rendered prompt with placeholders expanded, as the processor computes them."""
        processor = self.processor
        text = processor.expand_placeholders(prompt)
        bos = processor.tokenizer.bos_token
        ids = processor.tokenizer(text, add_special_tokens=not (bos and prompt.startswith(bos))).input_ids
        return torch.tensor([ids], device=self.model.device)

    def _reusable_prefix(self, input_ids: torch.Tensor) -> int:
        if self._ids is None or self._cache is None or not self._cache.is_croppable:
            return 0
        cached = min(self._cache.get_seq_length(), self._ids.shape[1], input_ids.shape[1] - 1)
        same = (self._ids[0, :cached] == input_ids[0, :cached]).long()
        start = int(same.cumprod(0).sum())
        placeholders = (self.model.config.video_token_index, self.model.config.audio_token_index)
        while 0 < start < input_ids.shape[1] and int(input_ids[0, start]) in placeholders:
            start -= 1  # the cache may not end inside a media run: move back to before it
        return start

    def _encode_new_media(self, message: dict[str, Any]) -> None:
        """Decode-once/encode-once: features of the media of a new message, appended in placeholder order."""
        content = message.get("content")
        if not isinstance(content, list):
            return
        videos = [block[block["type"]] for block in content if block.get("type") in ("video", "image")]
        audios = [
            block["audio"] for block in content if block.get("type") == "audio" and block.get("audio") is not None
        ]
        model, dtype = self.model, self.model.dtype
        with torch.inference_mode():
            if videos:
                pixels = self.processor.video_processor.batch(videos)
                features = model.get_video_features(
                    pixels["pixel_values_videos"].to(model.device, dtype),
                    video_frames_mask=pixels["video_frames_mask"].to(model.device),
                ).pooler_output
                self._features["video"].extend(features)
            if audios:
                values = self.processor.feature_extractor(audios)["input_values"].to(model.device, dtype)
                self._features["audio"].extend(model.get_audio_features(values).pooler_output)
