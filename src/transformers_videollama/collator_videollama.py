# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""Training batches for Video-LLaMA: training text, token ids, labels and lazily decoded media.

Two kinds of examples (see `data_videollama` for the record format every loader produces):

* **caption** (stage 1, and stage 2's image-caption data): `[BOS] + [prompt before] + media + [prompt after] +
  caption + end_sym`, every part tokenised on its own as the original's `forward` did (so the ids are the original's);
  the loss covers the caption and `end_sym` only.
* **instruction** (stage 2): the original's *training* text, which differs from the demo prompt:

      Vicuna   "\\n\\n###Human: <Video>{Q placeholders}</Video> {timestamps} {q0}\\n###Assistant: {a0}\\n###Human: ...###"
      LLaMA-2  "[INST] <<SYS>>\\n \\n<</SYS>>\\n\\n<Video>{Q placeholders}</Video> {timestamps} {q0} [/INST] {a0} </s><s>[INST] ..."

  tokenised once, with BOS. Images (LLaVA `<image>`) become `<Image>{Q placeholders}</Image>`.

Label masking (`label_masking`):

* `"answers"` (default): exactly the tokens of the assistant's answers and of the end-of-turn marker that follows
  each answer (`"\\n###"` for Vicuna, `" </s>"` for LLaMA-2: the model must learn to stop) are supervised; the system
  text, the user turns, role names, placeholders and padding are -100. Tokens are attributed to answers by their
  character offsets in the rendered text, so nothing depends on tokenising pieces separately.
* `"original"`: the original code's masking, reproduced literally for exact reproduction of its runs. For Vicuna
  (`preprocess` + `_mask_targets`) every piece is tokenised on its own *with* BOS to measure it, so each masked span
  ends one token late and the supervised spans drift by one token per turn; the first 2 tokens of every user turn are
  left unmasked. For LLaMA-2 (`preprocess_for_llama_v2`) each round is measured with its BOS and the instruction
  with `len - 2`. The attention mask is `input_ids != pad_token_id`, as the original's collater built it.

Answer priors. An assistant turn may carry `priors` (the prior over how the answer goes on at some character:
`answer_prior_biases`); the collator turns them into logit biases on the supervised answer tokens
(`answer_prior_index` / `answer_prior_bias` in the batch), which `VideoLlamaTrainer` adds before the loss. Supported
with the `"answers"` masking in both prompt formats.

Audio. An example's `audio` (a video or audio file; usually the video itself) is rendered with the demo's
audio-visual sentence and fills the `<AudioHere>` placeholders through the ImageBind audio trunk. In the paper's
audio-branch stages (`audio_branch_from_images=True`) there is no audio at all: the frames are encoded by ImageBind's
*vision* trunk (`imagebind_pixel_values`) and fill `num_audio_query_tokens` `<AudioHere>` placeholders inside the
visual wrapper (`<Video>...</Video>`), like the original's `train_flag == 1`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .processing_videollama import AUDIO_TOKEN, VIDEO_TOKEN
from .video_processing_videollama import frames_message


logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "TRAINING_FORMATS",
    "EncodedExample",
    "VideoLlamaDataCollator",
    "answer_prior_biases",
    "blip_caption",
    "check_answer_prior",
    "prior_bias_tensors",
    "original_llama2_labels",
    "original_vicuna_labels",
    "render_training_text",
]

IGNORE_INDEX = -100
# The visual wrappers of the original's training text (`preprocess_multimodal` of both instruction datasets).
VIDEO_WRAPPER = ("<Video>", "</Video> ")
IMAGE_WRAPPER = ("<Image>", "</Image>")
# The demo's audio sentences (the chat templates'): the only way the released models ever saw audio.
AUDIO_VISUAL_SENTENCE = (
    "Close your eyes, open your ears and you imagine only based on the sound that: {audio}.                 "
    "Close your ears, open your eyes and you see that {video}.                  "
    "Now answer my question based on what you have just seen and heard. "
)
AUDIO_SENTENCE = "Close your eyes, open your ears and you imagine only based on the sound that: {audio}. "

TRAINING_FORMATS = {
    # the system text and role names of the original's training conversations (`video_conversation`,
    # `llama_v2_video_conversation`); the layout itself is in `render_training_text`
    "vicuna": {"system": "", "roles": ("Human", "Assistant")},
    "llama2": {"system": " ", "roles": ("USER", "ASSISTANT")},
}


def blip_caption(caption: str, max_words: int = 50) -> str:
    """LAVIS' `BlipCaptionProcessor`: lowercase, punctuation `.!"()*#:;~` to spaces, one space, first 50 words."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


# ------------------------------------------------------------------------------------------------------------------
# Training text
# ------------------------------------------------------------------------------------------------------------------


def _turns(conversations: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """Normalise `[{"from": "human"|"gpt", "value"}]` / `[{"role": "user"|"assistant", "content"}]` / `[{"q","a"}]`."""
    turns: list[tuple[str, str]] = []
    for i, turn in enumerate(conversations):
        if "q" in turn and "a" in turn:  # VideoChat-instruct `QA` pairs
            turns += [("user", str(turn["q"])), ("assistant", str(turn["a"]))]
            continue
        role = str(turn.get("from", turn.get("role", ""))).lower()
        value = turn.get("value", turn.get("content"))
        if role in ("human", "user"):
            role = "user"
        elif role in ("gpt", "assistant"):
            role = "assistant"
        else:
            raise ValueError(f"Conversation turn {i} has an unknown role {role!r}; use human/gpt or user/assistant.")
        if not isinstance(value, str):
            raise ValueError(f"Conversation turn {i} needs a string 'value' (or 'content'), got {value!r}.")
        turns.append((role, value))
    if not turns or turns[0][0] != "user":
        raise ValueError("A conversation must start with a user (human) turn.")
    for i, (role, _) in enumerate(turns):
        if role != ("user", "assistant")[i % 2]:
            raise ValueError(f"Conversation turns must alternate user/assistant; turn {i} is a second {role!r} turn.")
    return turns


def _answer_priors(conversations: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The `priors` of each assistant turn, in order (`[]` where a turn has none)."""
    out = []
    for turn in conversations:
        role = str(turn.get("from", turn.get("role", ""))).lower()
        if role in ("gpt", "assistant"):
            out.append(list(turn.get("priors") or []))
        elif turn.get("priors"):
            raise ValueError("'priors' belong to assistant (gpt) turns: they weigh the answer's words")
    return out


# A prior weight of 0 (an answer the prior rules out) as a logit bias: finite, so that no softmax sees -inf.
_ZERO_PRIOR_BIAS = -1e4


def answer_prior_biases(
    text: str,
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    answers: Sequence[tuple[int, str, Sequence[dict[str, Any]]]],
    tokenize: Any,
) -> list[tuple[int, int, float]]:
    """Logit biases that put a known *prior* over an answer's words into the training loss (product of experts).

    Debiasing by a product of experts (Clark et al., 2019, "Don't Take the Easy Way Out"; He et al., 2019): where the
    training data ties an answer word to something the model can see that does not cause it (in a world where no
    triangle is ever still in training, "not moving" is never the answer for a triangle), the model learns the tie
    instead of the cause, and fails on the pairs training never showed. Adding the log of the tie (the *prior*) to
    the logits while training explains that part of the answer already, so the gradient teaches only what the prior
    does not; inference does not add it.

    `answers`: per answer, its first character in `text`, its text and its priors, each
    `{"offset": int, "choices": [str, ...], "weights": [float, ...]}`: at character `offset` of the answer it goes on
    with one of `choices` (the longest that matches; its weight must be > 0), and `weights` are the prior's
    (unnormalised) probabilities of them. Each choice is tokenised in place (`tokenize(text) -> (ids, offsets)`);
    along the answer's own tokens, wherever the choices still agreeing with it so far continue with different tokens,
    each such token gets bias `log(weight of the choices it starts / the largest such weight)`: the likeliest
    continuation keeps its logit, the others are lowered (`_ZERO_PRIOR_BIAS` for weight 0), other tokens untouched.

    Returns `(position, token id, bias)`: the bias is added to the logits that predict `ids[position]`.
    """
    entries: list[tuple[int, int, float]] = []
    for start, answer, priors in answers:
        for number, prior in enumerate(priors):
            where = f"answer {answer!r}, prior {number}"
            offset, choices, weight, actual = check_answer_prior(prior, answer, where)
            at = start + offset
            first = next((i for i, (s, e) in enumerate(offsets) if e > at and e > s), None)
            if first is None:  # truncated away: nothing of it is supervised
                continue
            others = {c: list(tokenize(text[:at] + c + text[at + len(actual) :])[0]) for c in choices if c != actual}
            for choice, other in others.items():  # a choice may start in the token before `at` ("▁" + "green")
                shared = _common_prefix(ids, other)
                if shared < first:
                    if offsets[shared][1] < at:
                        raise ValueError(
                            f"{where}: choice {choice!r} changes how the text before it is tokenised; "
                            "start the choices at a word boundary"
                        )
                    first = shared
            streams = {actual: list(ids[first:]), **{c: other[first:] for c, other in others.items()}}
            own = streams[actual]
            shared_tail = min(
                (_common_suffix(own, stream) for choice, stream in streams.items() if choice != actual),
                default=0,
            )
            for step in range(max(len(own) - shared_tail, 1)):
                groups: dict[int, float] = {}
                for choice, stream in streams.items():
                    if len(stream) > step and stream[:step] == own[:step]:
                        groups[stream[step]] = groups.get(stream[step], 0.0) + weight[choice]
                if len(groups) < 2:
                    continue
                top = max(groups.values())
                for token, total in groups.items():
                    bias = math.log(total / top) if total > 0 else _ZERO_PRIOR_BIAS
                    if bias != 0.0:
                        entries.append((first + step, token, bias))
    return entries


def prior_bias_tensors(rows: Sequence[Sequence[tuple[int, int, float]]]) -> dict[str, torch.Tensor]:
    """A batch's answer-prior biases (one list per row) as `answer_prior_index` (N, 3): row, position, token id, and
    `answer_prior_bias` (N,); `{}` when there are none (the batch then trains on the plain loss)."""
    flat = [(row, position, token, bias) for row, entries in enumerate(rows) for position, token, bias in entries]
    if not flat:
        return {}
    return {
        "answer_prior_index": torch.tensor([entry[:3] for entry in flat], dtype=torch.long),
        "answer_prior_bias": torch.tensor([entry[3] for entry in flat], dtype=torch.float32),
    }


def check_answer_prior(prior: Any, answer: str, where: str) -> tuple[int, list[str], dict[str, float], str]:
    """Check one answer prior (`answer_prior_biases`) and return its offset, choices, weight per choice and the
    choice the answer goes on with (the longest that matches); a ValueError names `where` and the reason."""
    if not isinstance(prior, dict) or not {"offset", "choices", "weights"} <= set(prior):
        raise ValueError(f"{where}: a prior is an object with 'offset', 'choices' and 'weights', got {prior!r}")
    offset, choices, weights = prior["offset"], prior["choices"], prior["weights"]
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= len(answer):
        raise ValueError(f"{where}: 'offset' must be a character index into the answer, got {offset!r}")
    if (
        not isinstance(choices, (list, tuple))
        or not choices
        or not all(isinstance(c, str) and c for c in choices)
        or len(set(choices)) != len(choices)
    ):
        raise ValueError(f"{where}: 'choices' must be a non-empty list of distinct strings, got {choices!r}")
    if not isinstance(weights, (list, tuple)) or len(weights) != len(choices):
        raise ValueError(f"{where}: 'weights' must give one number per choice, got {weights!r}")
    if not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in weights
    ):
        raise ValueError(f"{where}: 'weights' must be finite numbers >= 0, got {weights!r}")
    matching = [c for c in choices if answer.startswith(c, offset)]
    if not matching:
        raise ValueError(f"{where}: the answer does not go on with any of {list(choices)!r} at offset {offset}")
    actual = max(matching, key=len)
    weight = dict(zip(choices, (float(w) for w in weights)))
    if weight[actual] <= 0:
        raise ValueError(f"{where}: the answer's own choice {actual!r} has prior weight 0")
    return offset, list(choices), weight, actual


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _common_suffix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def render_training_text(
    turns: Sequence[tuple[str, str]], chat_format: str, system: str | None = None
) -> tuple[str, list[tuple[int, int]], list[str]]:
    """The original's training text for alternating `(role, text)` turns (media already spliced into the text).

    Returns `(text, answer_spans, pieces)`: the character spans of every answer *with* its end-of-turn marker (what
    the default masking supervises), and the pieces the original measured for its own masking (Vicuna: the header and
    one string per turn; LLaMA-2: unused, the rounds are re-derived from the text as the original did).
    """
    if chat_format not in TRAINING_FORMATS:
        raise ValueError(f"Unknown chat_format {chat_format!r}; choose one of {sorted(TRAINING_FORMATS)}.")
    system = TRAINING_FORMATS[chat_format]["system"] if system is None else system
    spans: list[tuple[int, int]] = []
    if chat_format == "vicuna":
        human, assistant = TRAINING_FORMATS["vicuna"]["roles"]
        text = header = f"{system}\n\n"
        pieces = [header]
        for role, value in turns:
            piece = f"###{human if role == 'user' else assistant}: {value}\n"
            if role == "assistant":
                start = len(text) + len(f"###{assistant}: ")
                spans.append((start, len(text) + len(piece) + len("###")))  # answer + "\n###"
            text += piece
            pieces.append(piece)
        return text + "###", spans, pieces
    # LLaMA-2 (`Conversation.get_prompt`, LLAMA_2 style, sep "<s>", sep2 "</s>", then `.lstrip("<s>")`)
    text = ""
    for i, (role, value) in enumerate(turns):
        if role == "user":
            if i == 0:
                value = f"<<SYS>>\n{system}\n<</SYS>>\n\n{value}"
            text += ("<s>" if i else "") + f"[INST] {value} [/INST]"
        else:
            start = len(text) + 1
            text += f" {value} </s>"
            spans.append((start, len(text)))  # answer + " </s>"
    return text, spans, []


def _count_not_pad(ids: Sequence[int], pad_id: int) -> int:
    return sum(1 for i in ids if i != pad_id)


def original_vicuna_labels(
    input_ids: Sequence[int], pieces: Sequence[str], speakers: Sequence[str], tokenizer: Any, max_length: int = 512
) -> list[int]:
    """`preprocess` + `_mask_targets` of the original (Vicuna), literally, drift included.

    Each piece (header, then one per turn) is tokenised on its own with BOS and measured as its non-pad token count;
    the header is masked, then each user turn from 2 tokens after its (drifted) start to its (drifted) end.
    """
    pad_id = tokenizer.pad_token_id
    lens = [_count_not_pad(tokenizer(p, truncation=True, max_length=max_length).input_ids, pad_id) for p in pieces]
    labels = list(input_ids)
    cur = lens[0]
    labels[:cur] = [IGNORE_INDEX] * len(labels[:cur])
    for length, speaker in zip(lens[1:], speakers):
        if speaker == "user":
            stop = min(cur + length, len(labels))
            if cur + 2 < stop:
                labels[cur + 2 : stop] = [IGNORE_INDEX] * (stop - cur - 2)
        cur += length
    return labels


def original_llama2_labels(input_ids: Sequence[int], text: str, tokenizer: Any) -> list[int]:
    """`preprocess_for_llama_v2` of the original, literally: rounds split on `</s>`, each measured with its BOS."""
    labels = list(input_ids)
    cur = 1
    labels[:cur] = [IGNORE_INDEX] * len(labels[:cur])
    for rou in text.split("</s>"):
        if rou == "":
            break
        parts = rou.split("[/INST] ")
        if len(parts) != 2:
            break
        round_len = len(tokenizer(rou).input_ids)
        instruction_len = len(tokenizer(parts[0] + "[/INST] ").input_ids) - 2
        lo, hi = min(cur, len(labels)), min(max(cur + instruction_len, cur), len(labels))
        labels[lo:hi] = [IGNORE_INDEX] * (hi - lo)
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    return labels


# ------------------------------------------------------------------------------------------------------------------
# Collator
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class EncodedExample:
    """One example after text rendering and tokenisation, before media decoding and padding."""

    input_ids: list[int]
    labels: list[int]
    attention_mask: list[int]
    videos: list[Any] = field(default_factory=list)  # decoded `DecodedVideo`s, in placeholder order
    audios: list[Any] = field(default_factory=list)  # audio sources, in placeholder order
    text: str = ""
    # answer priors as logit biases: (token position, token id, bias) for the logits that predict that position
    priors: list[tuple[int, int, float]] = field(default_factory=list)


@dataclass
class VideoLlamaDataCollator:
    """Turn training records into model batches: ids, attention mask, labels, frames and audio features.

    Media are decoded here, lazily, with PyAV (per batch, in the DataLoader workers), so datasets hold only paths.

    Args:
        processor (`VideoLlamaProcessor`): its tokenizer, video processor (frame sampling; training augmentation if
            `do_train_augmentation` is on) and feature extractor are used, and its placeholder counts.
        chat_format (`str`, defaults to `"vicuna"`): training text of the Vicuna or the LLaMA-2 release (`"llama2"`).
        label_masking (`str`, defaults to `"answers"`): `"answers"` or `"original"` (see the module docstring).
        audio_branch_from_images (`bool`, defaults to `False`): the paper's audio-branch stages: frames go through
            ImageBind's vision trunk into the audio Q-Former (`imagebind_pixel_values`) and fill
            `num_audio_query_tokens` audio placeholders in place of the video placeholders.
        timestamps (`bool`, defaults to `True`): put the timestamp sentence after a video, as the original did for
            every dataset except the Chinese ones (`data_type` with "cn").
        system (`str`, *optional*): system text of the training format (default `""` Vicuna, `" "` LLaMA-2).
        caption_prompts (`list[str]`, *optional*): stage-2 image-caption prompts with one `<ImageHere>` (the
            original's `prompts/alignment_image.txt`); one is drawn per example and wrapped in `caption_template`.
        caption_template (`str`, *optional*): e.g. `"###Human: {} ###Assistant: "` (Vicuna) or
            `"[INST] <<SYS>>\\n \\n<</SYS>>\\n\\n{} [/INST] "` (LLaMA-2). Defaults to the chat format's.
        end_sym (`str`, defaults to `"\\n"`): appended to captions (the original's default; its stage-2 configs use
            `"###"` for Vicuna and `"</s>"` for LLaMA-2).
        max_length (`int`, defaults to 512): instruction texts are truncated here (the original's limit); a cut
            through media placeholders raises.
        max_caption_tokens (`int`, defaults to 32): caption + end_sym truncation (the original's `max_txt_len`).
        num_frames (`int`, *optional*): frames per video (default: the video processor's, 8).
        prompt_format (`str`, defaults to `"training"`): `"training"` renders instruction records in the original's
            *training* text (above). `"chat_template"` renders them with the processor's chat template, exactly as
            `apply_chat_template` renders a request at inference (the demo prompt: system message, timestamps, the
            audio-visual sentence), and supervises each answer with the separator that ends it. Use it when the
            model should see at training time the prompt it will be asked with (a model trained from scratch, a
            deployment that always uses the chat template). Media go in front of the first question.
    """

    processor: Any
    chat_format: str = "vicuna"
    label_masking: str = "answers"
    audio_branch_from_images: bool = False
    timestamps: bool = True
    system: str | None = None
    caption_prompts: Sequence[str] | None = None
    caption_template: str | None = None
    end_sym: str = "\n"
    max_length: int = 512
    max_caption_tokens: int = 32
    num_frames: int | None = None
    prompt_format: str = "training"

    def __post_init__(self) -> None:
        if self.prompt_format not in ("training", "chat_template"):
            raise ValueError(f"prompt_format must be 'training' or 'chat_template', got {self.prompt_format!r}.")
        if self.prompt_format == "chat_template" and self.label_masking != "answers":
            raise ValueError("prompt_format='chat_template' supports label_masking='answers' only.")
        if self.chat_format not in TRAINING_FORMATS:
            raise ValueError(f"chat_format must be one of {sorted(TRAINING_FORMATS)}, got {self.chat_format!r}.")
        if self.label_masking not in ("answers", "original"):
            raise ValueError(f"label_masking must be 'answers' or 'original', got {self.label_masking!r}.")
        for prompt in self.caption_prompts or ():
            if prompt.count(VIDEO_TOKEN) != 1:
                raise ValueError(f"Each caption prompt needs exactly one {VIDEO_TOKEN}; got {prompt!r}.")
        if self.caption_template is None:
            self.caption_template = {
                "vicuna": "###Human: {} ###Assistant: ",
                "llama2": "[INST] <<SYS>>\n \n<</SYS>>\n\n{} [/INST] ",
            }[self.chat_format]
        tokenizer = self.processor.tokenizer
        if tokenizer is None:
            raise ValueError("The processor has no tokenizer; build it with build_videollama_tokenizer().")
        self.tokenizer = tokenizer
        self.video_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        self.audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # chat-template records: rendered text -> (ids, labels), by what the template reads (see _render_key)
        self._rendered: dict[str, tuple[list[int], list[int], str]] = {}

    # -- public ------------------------------------------------------------------------------------------------------

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("The collator got an empty batch.")
        encoded = [self.encode(example) for example in examples]
        return self.pad(encoded)

    def encode(self, example: dict[str, Any]) -> EncodedExample:
        """Render, tokenise and label one record (decoding its media, which the text needs for timestamps)."""
        try:
            if example.get("conversations") and self.prompt_format == "chat_template":
                return self._encode_chat_template(example)
            if example.get("conversations"):
                return self._encode_conversation(example)
            if example.get("caption") is not None and self.prompt_format == "chat_template":
                raise ValueError(
                    "prompt_format='chat_template' trains on conversations; write the caption as the answer to a "
                    "question (e.g. 'Describe the video.')"
                )
            if example.get("caption") is not None:
                return self._encode_caption(example)
        except (ValueError, OSError) as error:
            raise type(error)(f"{_describe(example)}: {error}") from error
        raise ValueError(f"{_describe(example)}: a training record needs 'conversations' or a 'caption'.")

    def pad(self, encoded: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        """Right-pad ids (pad id), labels (-100) and the attention mask (0); stack the media."""
        length = max(len(e.input_ids) for e in encoded)
        batch = {
            "input_ids": torch.full((len(encoded), length), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(len(encoded), length, dtype=torch.long),
            "labels": torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long),
        }
        for row, e in enumerate(encoded):
            n = len(e.input_ids)
            batch["input_ids"][row, :n] = torch.tensor(e.input_ids)
            batch["attention_mask"][row, :n] = torch.tensor(e.attention_mask)
            batch["labels"][row, :n] = torch.tensor(e.labels)
        batch.update(prior_bias_tensors([e.priors for e in encoded]))
        videos = [v for e in encoded for v in e.videos]
        if videos:
            frames = self.processor.video_processor.batch(videos, return_tensors="pt")
            if self.audio_branch_from_images:
                batch["imagebind_pixel_values"] = frames["pixel_values_videos"]
                batch["imagebind_frames_mask"] = frames["video_frames_mask"]
            else:
                batch["pixel_values_videos"] = frames["pixel_values_videos"]
                batch["video_frames_mask"] = frames["video_frames_mask"]
        audios = [a for e in encoded for a in e.audios]
        if audios:
            batch["input_values"] = self.processor.feature_extractor(audios, return_tensors="pt")["input_values"]
        return batch

    # -- media -------------------------------------------------------------------------------------------------------

    def _media(self, example: dict[str, Any]) -> tuple[Any, str | None]:
        """The decoded video/image of a record (or None) and its kind."""
        source = example.get("media") or example.get("video") or example.get("image")
        if not source:
            return None, None
        path = os.fspath(source) if isinstance(source, os.PathLike) else source
        if isinstance(path, str) and not os.path.isfile(path):
            raise FileNotFoundError(f"media file {path!r} does not exist")
        decoded = self.processor.video_processor.load(path, num_frames=self.num_frames)
        return decoded, decoded.kind

    def _placeholders(self) -> tuple[str, int]:
        if self.audio_branch_from_images:
            return AUDIO_TOKEN, self.processor.num_audio_query_tokens
        return VIDEO_TOKEN, self.processor.num_video_query_tokens

    def _audio_source(self, example: dict[str, Any]) -> Any:
        audio = example.get("audio")
        if audio in (None, "", False):
            return None
        if self.audio_branch_from_images:
            raise ValueError(
                "audio_branch_from_images=True trains the audio branch on frames; records must not carry audio"
            )
        if audio is True:
            audio = example.get("media") or example.get("video")
        if isinstance(audio, str) and not os.path.isfile(audio):
            raise FileNotFoundError(f"audio file {audio!r} does not exist")
        return audio

    # -- instruction examples ----------------------------------------------------------------------------------------

    def _encode_conversation(self, example: dict[str, Any]) -> EncodedExample:
        turns = _turns(example["conversations"])
        priors = _answer_priors(example["conversations"])
        if any(priors) and self.label_masking != "answers":
            raise ValueError("answer 'priors' need label_masking='answers' (they weigh the supervised answer tokens)")
        decoded, kind = self._media(example)
        audio = self._audio_source(example)
        token, count = self._placeholders()
        slot = token * count
        videos, audios = ([decoded] if decoded is not None else []), ([audio] if audio is not None else [])

        first = turns[0][1]
        audio_slot = AUDIO_TOKEN * self.processor.num_audio_query_tokens
        if decoded is not None:
            # in place of a LLaVA-style tag (the original replaced "<image>" in place), else in front of the first
            # question (VideoChat style; the original's "<Video>...</Video> " + timestamps + question)
            if kind == "image":
                tag, wrapped = "<image>", IMAGE_WRAPPER[0] + slot + IMAGE_WRAPPER[1]
                in_place, in_front = wrapped, wrapped + " "
            else:
                tag, wrapped = "<video>", VIDEO_WRAPPER[0] + slot + VIDEO_WRAPPER[1].rstrip(" ")
                message = frames_message(decoded.metadata) if self.timestamps and decoded.metadata.fps else ""
                in_place = in_front = wrapped + " " + message
            if audio is not None:  # the demo's audio-visual sentence (it carries no timestamps)
                in_place = in_front = AUDIO_VISUAL_SENTENCE.format(audio=audio_slot, video=wrapped)
            mentioned = [i for i, (_, text) in enumerate(turns) if tag in text]
            if len(mentioned) > 1 or any(turns[i][1].count(tag) > 1 for i in mentioned):
                raise ValueError(f"the conversation mentions {tag} more than once but the record has one {kind}")
            if mentioned:
                i = mentioned[0]
                turns[i] = (turns[i][0], turns[i][1].replace(tag, in_place))
            else:
                turns[0] = ("user", in_front + first)
        elif audio is not None:
            turns[0] = ("user", AUDIO_SENTENCE.format(audio=audio_slot) + first)
        for role, text in turns:
            for stray in ("<image>", "<video>"):
                if stray in text:
                    raise ValueError(f"the conversation contains {stray} but the record has no {stray[1:-1]} file")

        text, spans, pieces = render_training_text(turns, self.chat_format, self.system)
        encoding = self.tokenizer(
            text, truncation=True, max_length=self.max_length, return_offsets_mapping=self.label_masking == "answers"
        )
        ids = list(encoding.input_ids)
        self._check_placeholders(ids, len(videos), len(audios))
        if self.label_masking == "original":
            if self.chat_format == "vicuna":
                labels = original_vicuna_labels(
                    ids, pieces, [r for r, _ in turns], self.tokenizer, max_length=self.max_length
                )
            else:
                labels = original_llama2_labels(ids, text, self.tokenizer)
            attention = [int(i != self.pad_id) for i in ids]
        else:
            labels = self._answer_labels(ids, encoding.offset_mapping, spans)
            attention = [1] * len(ids)
        answers = [(start, value, prior) for (start, _), (_, value), prior in zip(spans, turns[1::2], priors)]
        biases = self._prior_biases(text, ids, encoding.offset_mapping, labels, answers) if any(priors) else []
        return EncodedExample(ids, labels, attention, videos, audios, text, biases)

    def _encode_chat_template(self, example: dict[str, Any]) -> EncodedExample:
        """Render with the processor's chat template (as inference does); supervise answers + their separator."""
        turns = _turns(example["conversations"])
        for _, text in turns:
            for tag in ("<image>", "<video>"):
                if tag in text:
                    raise ValueError(
                        f"prompt_format='chat_template' puts the media before the first question; remove {tag}"
                    )
        source = example.get("media") or example.get("video") or example.get("image")
        if source and isinstance(source, str) and not os.path.isfile(source):
            raise FileNotFoundError(f"media file {source!r} does not exist")
        audio = self._audio_source(example)
        messages: list[dict[str, Any]] = []
        for i, (role, text) in enumerate(turns):
            if role == "assistant":
                messages.append({"role": "assistant", "content": text})
                continue
            content: list[dict[str, Any]] = []
            if i == 0 and source:
                content.append({"type": "video", "path": source})
                if audio is not None:
                    content.append({"type": "audio"} if audio == source else {"type": "audio", "path": audio})
            elif i == 0 and audio is not None:
                content.append({"type": "audio", "path": audio})
            content.append({"type": "text", "text": text})
            messages.append({"role": "user", "content": content})
        if self.system is not None:
            messages.insert(0, {"role": "system", "content": self.system})
        processor = self.processor
        # decode once (an unusable audio track is an error here: the record asked for it)
        messages = processor.prepare_conversation(messages, False, "error", self.num_frames, None)
        _, (videos,), audios, _ = processor._multimodal_inputs_from_conversations([messages], {})
        priors = _answer_priors(example["conversations"])
        key = self._render_key(messages) + (json.dumps(priors, sort_keys=True) if any(priors) else "")
        cached = self._rendered.get(key)
        if cached is None:
            cached = self._render_and_label(messages, priors)
            self._check_placeholders(cached[0], len(videos), len(audios))
            if len(self._rendered) < _MAX_RENDERED:
                self._rendered[key] = cached
        ids, labels, text, biases = cached
        return EncodedExample(list(ids), list(labels), [1] * len(ids), videos, audios, text, list(biases))

    def _render_key(self, messages: list[dict[str, Any]]) -> str:
        """What the chat template reads from a prepared conversation: roles, texts, block types, the timestamp
        sentence and audio decisions (decoded media enter only as their type names; their pixels and samples never
        change the text), plus the template and the length limit."""
        return json.dumps(
            [messages, self.processor.chat_template, self.max_length],
            sort_keys=True,
            default=lambda value: type(value).__name__,
        )

    def _render_and_label(
        self, messages: list[dict[str, Any]], priors: Sequence[Sequence[dict[str, Any]]] = ()
    ) -> tuple[list[int], list[int], str, list[tuple[int, int, float]]]:
        """Render with the chat template, tokenise, and supervise each answer up to its separator (and turn each
        answer's `priors`, one list per assistant message, into logit biases: `answer_prior_biases`).

        Renders once per answer boundary (the prompt that asks for it, the turn that holds it); the results are kept
        per `_render_key`, so an epoch after the first renders nothing (collating a batch of 16 of the bundled
        model's training records: 0.34 s -> 0.27 s).
        """
        processor = self.processor
        rendered: dict[tuple[int, bool], str] = {}

        def render(upto: int, generation_prompt: bool) -> str:
            key = (upto, generation_prompt)
            if key not in rendered:
                rendered[key] = processor.expand_placeholders(
                    processor.apply_chat_template(
                        messages[:upto], tokenize=False, add_generation_prompt=generation_prompt
                    )
                )
            return rendered[key]

        # each answer runs from the end of the prompt that asks for it to the end of the turn that holds it
        spans = [
            (len(render(index, True)), len(render(index + 1, False)))
            for index, message in enumerate(messages)
            if message["role"] == "assistant"
        ]
        text = render(len(messages), False)
        encoding = self._tokenize_with_offsets(text)
        ids = list(encoding.input_ids)
        labels = self._answer_labels(ids, encoding.offset_mapping, spans)
        if not any(priors):
            return ids, labels, text, []
        contents = [m["content"] for m in messages if m["role"] == "assistant"]
        answers = []
        for (start, end), content, prior in zip(spans, contents, priors):
            found = text.find(content, start, end) if isinstance(content, str) else -1
            if prior and found < 0:
                raise ValueError(f"answer {content!r}: not found where the chat template put it; cannot place priors")
            answers.append((found, content, prior))
        return ids, labels, text, self._prior_biases(text, ids, encoding.offset_mapping, labels, answers)

    def _tokenize_with_offsets(self, text: str) -> Any:
        bos = self.tokenizer.bos_token
        return self.tokenizer(
            text,
            add_special_tokens=not (bos and text.startswith(bos)),
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
        )

    def _prior_biases(
        self,
        text: str,
        ids: Sequence[int],
        offsets: Sequence[tuple[int, int]],
        labels: Sequence[int],
        answers: Sequence[tuple[int, str, Sequence[dict[str, Any]]]],
    ) -> list[tuple[int, int, float]]:
        """`answer_prior_biases` on this collator's tokenisation, kept where the position is supervised."""

        def tokenize(other: str) -> tuple[list[int], list[tuple[int, int]]]:
            encoding = self._tokenize_with_offsets(other)
            return list(encoding.input_ids), list(encoding.offset_mapping)

        biases = answer_prior_biases(text, ids, offsets, answers, tokenize)
        return [(position, token, bias) for position, token, bias in biases if labels[position] != IGNORE_INDEX]

    def _answer_labels(
        self, ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
    ) -> list[int]:
        """Supervise exactly the tokens whose characters overlap an answer span; never a placeholder."""
        return [
            i
            if e > s and i not in (self.video_id, self.audio_id) and any(s < end and e > start for start, end in spans)
            else IGNORE_INDEX
            for i, (s, e) in zip(ids, offsets)
        ]

    def _check_placeholders(self, ids: Sequence[int], num_visual: int, num_audio: int) -> None:
        token, count = self._placeholders()
        want_video = 0 if self.audio_branch_from_images else num_visual * count
        want_audio = num_audio * self.processor.num_audio_query_tokens + (
            num_visual * count if self.audio_branch_from_images else 0
        )
        got_video, got_audio = sum(i == self.video_id for i in ids), sum(i == self.audio_id for i in ids)
        if (got_video, got_audio) != (want_video, want_audio):
            raise ValueError(
                f"after tokenisation the text has {got_video} video and {got_audio} audio placeholder tokens, expected "
                f"{want_video} and {want_audio}: max_length={self.max_length} cut through the media, or the text "
                "itself contains placeholder tokens"
            )

    # -- caption examples --------------------------------------------------------------------------------------------

    def _encode_caption(self, example: dict[str, Any]) -> EncodedExample:
        decoded, _ = self._media(example)
        if decoded is None:
            raise ValueError("a caption record needs a video or image")
        token, count = self._placeholders()
        before, after = "", ""
        if self.caption_prompts:
            prompt = self.caption_prompts[int(torch.randint(len(self.caption_prompts), (1,)).item())]
            before, after = self.caption_template.format(prompt).split(VIDEO_TOKEN)

        def tok(text: str) -> list[int]:
            return list(self.tokenizer(text, add_special_tokens=False).input_ids) if text else []

        caption = self.tokenizer(
            example["caption"] + self.end_sym,
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_caption_tokens,
        )
        caption_ids = list(caption.input_ids)
        prefix = [self.tokenizer.bos_token_id] + tok(before) + [self.tokenizer.convert_tokens_to_ids(token)] * count
        prefix += tok(after)
        ids = prefix + caption_ids
        labels = [IGNORE_INDEX] * len(prefix) + caption_ids
        if self.label_masking == "original":  # padding-id tokens of the caption were masked as padding
            labels = [
                IGNORE_INDEX if i == self.pad_id and n >= len(prefix) else lab
                for n, (i, lab) in enumerate(zip(ids, labels))
            ]
        attention = [1] * len(prefix) + list(caption.attention_mask)
        return EncodedExample(ids, labels, attention, [decoded], [], "")


# Rendered chat-template records kept per collator (a few KB each); beyond this many, new ones are rendered each time.
_MAX_RENDERED = 200_000


def _describe(example: dict[str, Any]) -> str:
    for key in ("id", "media", "video", "image"):
        if example.get(key):
            return f"training record {key}={example[key]!r}"
    return "training record"
