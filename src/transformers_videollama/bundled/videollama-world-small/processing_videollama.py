# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""Processor for Video-LLaMA: tokenizer + video processor + audio feature extractor, and the demo chat format.

Placeholders. The text holds one `<ImageHere>` per video or image and one `<AudioHere>` per audio input; the processor
expands them to `num_video_query_tokens` / `num_audio_query_tokens` copies (32 / 8 for the releases, read from the
model config by the converter). The model scatters the video Q-Former outputs over the `<ImageHere>` positions and
the audio ones over `<AudioHere>`, in order.

The original demo wrote `<ImageHere>` for the audio slot too. Our rendered prompts are therefore byte-identical to
the original's after mapping `<AudioHere>` back to `<ImageHere>` (`VideoLlamaProcessor.original_prompt`), while the
token ids use the audio placeholder id for the audio slot. The text between placeholders tokenises to the same ids
as the original's segment-by-segment tokenisation (each segment on its own with the SentencePiece dummy prefix, BOS
only on the first): `build_videollama_tokenizer` builds a tokenizer whose added tokens split the text exactly there.

Audio from videos. `apply_chat_template(..., load_audio_from_video=True)` decodes each video's audio track. When a
video has no audio track, or its audio is unreadable or shorter than one 25 ms window, the original silently fell back
to the video-only prompt. Here that fallback is explicit: `audio_fallback="warn"` (default) logs a warning naming
the file and the reason and renders the video-only prompt (with its timestamp message), `audio_fallback="error"`
raises instead.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterable
from importlib import resources
from typing import Any

import transformers
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.video_processing_utils import VideoProcessorMixin

from .feature_extraction_videollama import AudioTooShortError, VideoLlamaFeatureExtractor
from .media_io_videollama import AudioTrack, NoAudioTrackError, describe_source, resampled_length
from .video_processing_videollama import VideoLlamaVideoProcessor, frames_message


logger = logging.getLogger(__name__)

__all__ = [
    "AUDIO_TOKEN",
    "DEMO_SYSTEM_MESSAGE",
    "VIDEO_TOKEN",
    "VideoLlamaProcessor",
    "build_videollama_tokenizer",
    "load_chat_template",
    "train_videollama_tokenizer",
]

VIDEO_TOKEN = "<ImageHere>"
AUDIO_TOKEN = "<AudioHere>"
DEMO_SYSTEM_MESSAGE = (
    "You are able to understand the visual content that the user provides. "
    "Follow the instructions carefully and explain your answers in detail."
)
_TEMPLATE_FILES = {
    "vicuna": "chat_template_videollama_vicuna.jinja",
    "llama2": "chat_template_videollama_llama2.jinja",
}

# ProcessorMixin type-checks `video_processor` against `transformers.VideoProcessorMixin`, which transformers only
# exports when torchvision imports. Our video processor does not need torchvision, so make the name resolvable.
if "VideoProcessorMixin" not in transformers.__dict__:  # pragma: no cover - depends on the installed extras
    setattr(transformers, "VideoProcessorMixin", VideoProcessorMixin)


def load_chat_template(name: str) -> str:
    """The Jinja chat template of a released family: `"vicuna"` (`###Human: ... ###Assistant:`) or `"llama2"`."""
    if name not in _TEMPLATE_FILES:
        raise ValueError(f"Unknown chat template {name!r}; choose one of {sorted(_TEMPLATE_FILES)}.")
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, _TEMPLATE_FILES[name])
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    return resources.files(__package__).joinpath(_TEMPLATE_FILES[name]).read_text(encoding="utf-8")  # pragma: no cover


def _legacy_llama_normalizer() -> Any:
    """Legacy LLaMA: every piece of text between added tokens gets the "▁" dummy prefix, as SentencePiece did."""
    from tokenizers import normalizers

    return normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])


def _llama_tokenizer(model: Any, specials: tuple[str, str, str], bos_id: int, pre_tokenizer: Any = None) -> Any:
    """A fast tokenizer around a BPE `model` with LLaMA's conventions (shared by the two builders below).

    Legacy "▁" dummy prefix (`_legacy_llama_normalizer`), BOS in front of every sequence; `pad_token = unk`; `<ImageHere>` / `<AudioHere>` appended as special tokens.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, processors
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    unk, bos, eos = specials
    backend = Tokenizer(model)
    backend.normalizer = _legacy_llama_normalizer()
    if pre_tokenizer is not None:
        backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tokenizer = TokenizersBackend(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=unk,
        clean_up_tokenization_spaces=False,
        model_max_length=int(1e30),
    )
    tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN, AUDIO_TOKEN]})
    return tokenizer


def build_videollama_tokenizer(llama_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a LLaMA / Vicuna / LLaMA-2 tokenizer folder the way the original Video-LLaMA used it.

    The original used transformers 4.28's slow `LlamaTokenizer`: SentencePiece with its dummy prefix applied to every
    piece of text between special tokens ("legacy" behaviour), `pad_token = unk_token`, and `<ImageHere>` (plus
    `<AudioHere>` here) added as special tokens at ids `vocab_size` and `vocab_size + 1`. This builds the equivalent
    fast tokenizer from `tokenizer.model` (no protobuf needed) and checks it against SentencePiece on probe strings.

    Args:
        llama_path: folder with `tokenizer.model` (SentencePiece BPE), as shipped with LLaMA/Vicuna checkpoints.

    Returns:
        A `TokenizersBackend` tokenizer; `save_pretrained` writes a `tokenizer.json` that reloads with
        `AutoTokenizer` without SentencePiece.
    """
    import sentencepiece as spm
    from tokenizers.models import BPE
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    model_file = os.path.join(os.fspath(llama_path), "tokenizer.model")
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"No SentencePiece model at {model_file!r}; pass a LLaMA/Vicuna tokenizer folder.")
    sp = spm.SentencePieceProcessor(model_file=model_file)
    vocab, _, merges = SentencePieceExtractor(model_file).extract()
    unk, bos, eos = (sp.id_to_piece(i) for i in (sp.unk_id(), sp.bos_id(), sp.eos_id()))
    tokenizer = _llama_tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback="<0x00>" in vocab),
        (unk, bos, eos),
        sp.bos_id(),
    )
    expected = {VIDEO_TOKEN: sp.get_piece_size(), AUDIO_TOKEN: sp.get_piece_size() + 1}
    got = {t: tokenizer.convert_tokens_to_ids(t) for t in expected}
    if got != expected:
        raise ValueError(f"Placeholder tokens got ids {got}, expected {expected} (the tokenizer has extra tokens?).")
    _check_against_sentencepiece(tokenizer, sp, (unk, bos, eos))
    return tokenizer


def train_videollama_tokenizer(texts: Iterable[str], vocab_size: int = 1000, min_frequency: int = 2) -> Any:
    """Train a small BPE tokenizer on `texts` with the LLaMA tokenizer's conventions, for models trained from scratch.

    Conventions kept from LLaMA (so everything downstream treats it like a converted LLaMA tokenizer): `<unk>` = 0,
    `<s>` = 1 (added in front of every sequence), `</s>` = 2, 256 byte-fallback tokens `<0x00>`..`<0xFF>` (no text is
    ever unknown), the legacy "▁" dummy prefix on every piece of text between special tokens, `pad_token = unk`, and
    `<ImageHere>` / `<AudioHere>` at ids `vocab_size` and `vocab_size + 1`. One difference: punctuation and digits
    are pieces of their own, so a turn separator such as `###` can never merge with the word before it (a stop id
    is then a single token).

    Args:
        texts: training text (e.g. the rendered prompts and answers of a dataset).
        vocab_size: size including the 259 special/byte tokens (the placeholders come on top).
        min_frequency: minimum count for a merge.
    """
    from tokenizers import Regex, Tokenizer, pre_tokenizers, trainers
    from tokenizers.models import BPE

    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    if vocab_size <= len(specials) + len(byte_tokens):
        raise ValueError(f"vocab_size must exceed the {len(specials) + len(byte_tokens)} special and byte tokens")
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            # a word with its "▁" prefix; a run of spaces stays one piece (minus the "▁" of the word after it)
            pre_tokenizers.Split(Regex("▁+(?=▁)|▁?[^▁]+"), behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    scratch = Tokenizer(BPE(unk_token="<unk>"))
    scratch.normalizer, scratch.pre_tokenizer = _legacy_llama_normalizer(), pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials) - len(byte_tokens),
        min_frequency=min_frequency,
        special_tokens=[],
        show_progress=False,
    )
    scratch.train_from_iterator(texts, trainer)
    learned = json.loads(scratch.to_str())["model"]
    vocab = {token: index for index, token in enumerate(specials + byte_tokens)}
    for token, _ in sorted(learned["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    return _llama_tokenizer(
        BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True),
        tuple(specials),
        vocab["<s>"],
        pre_tokenizer,
    )


_PROBES = (
    "###Human: <Video>",
    "</Video> The video contains 8 frames sampled at 0.0, 0.9, 1.8 seconds.  What is happening in this video?###",
    "[INST] <<SYS>>\n\n<</SYS>>\n\nClose your eyes, open your ears",
    ".                 Close your ears, open your eyes and you see that <Video>",
    " leading space, trailing space ",
    "Ünïcödé ‘quotes’ 中文 🙂 tabs\tand\nnewlines",
)


def _check_against_sentencepiece(tokenizer: Any, sp: Any, specials: tuple[str, str, str]) -> None:
    """Fail loudly if the fast tokenizer would give other ids than the original slow one on typical prompt text."""
    for text in _PROBES:
        want = [sp.bos_id()] + sp.encode(text)
        got = tokenizer(text).input_ids
        if got != want:
            raise ValueError(
                f"The converted tokenizer disagrees with SentencePiece on {text!r}: {got} != {want}. "
                "The tokenizer.model may use normalisation rules this converter does not reproduce."
            )


class VideoLlamaProcessor(ProcessorMixin):
    """Tokenizer + video processor + audio feature extractor for Video-LLaMA.

    Args:
        video_processor (`VideoLlamaVideoProcessor`): decodes/normalises videos and images.
        feature_extractor (`VideoLlamaFeatureExtractor`): ImageBind audio features.
        tokenizer: from `build_videollama_tokenizer` (has `<ImageHere>` and `<AudioHere>`).
        num_video_query_tokens (`int`, defaults to 32): tokens per video/image (the model's video Q-Former queries).
        num_audio_query_tokens (`int`, defaults to 8): tokens per audio input (the audio Q-Former queries); 0 for
            a model without an audio branch (audio inputs are then refused).
        chat_template (`str` or `dict`, *optional*): `"vicuna"`, `"llama2"`, a Jinja string, or a dict of named
            templates. The two released templates are always available by name (`chat_template="llama2"` in
            `apply_chat_template`); the one given here (default Vicuna) is the default.
        audio_fallback (`str`, defaults to `"warn"`): what `load_audio_from_video=True` does for a video whose audio
            cannot be used: `"warn"` (log and use the video-only prompt, like the original did silently) or `"error"`.
    """

    def __init__(
        self,
        video_processor: VideoLlamaVideoProcessor | None = None,
        feature_extractor: VideoLlamaFeatureExtractor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        num_video_query_tokens: int = 32,
        num_audio_query_tokens: int = 8,
        chat_template: str | dict[str, str] | None = None,
        audio_fallback: str = "warn",
        **kwargs: Any,
    ):
        if audio_fallback not in ("warn", "error"):
            raise ValueError(f"`audio_fallback` must be 'warn' or 'error', got {audio_fallback!r}.")
        for name, value, minimum in (
            ("num_video_query_tokens", num_video_query_tokens, 1),
            ("num_audio_query_tokens", num_audio_query_tokens, 0),
        ):
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"`{name}` must be an int >= {minimum} (from the model config), got {value!r}.")
        self.num_video_query_tokens = num_video_query_tokens
        self.num_audio_query_tokens = num_audio_query_tokens
        self.audio_fallback = audio_fallback
        self.video_token = VIDEO_TOKEN
        self.audio_token = AUDIO_TOKEN
        video_processor = video_processor if video_processor is not None else VideoLlamaVideoProcessor()
        feature_extractor = feature_extractor if feature_extractor is not None else VideoLlamaFeatureExtractor()
        super().__init__(
            video_processor=video_processor,
            feature_extractor=feature_extractor,
            tokenizer=tokenizer,
            chat_template=_resolve_templates(chat_template),
        )
        if tokenizer is not None:
            missing = [t for t in (VIDEO_TOKEN, AUDIO_TOKEN) if t not in tokenizer.get_vocab()]
            if missing:
                raise ValueError(
                    f"The tokenizer lacks the placeholder tokens {missing}; use build_videollama_tokenizer()."
                )
            self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
            self.audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)

    # ------------------------------------------------------------------------------------------------------------
    # Main entry point
    # ------------------------------------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | list[str] | None = None,
        videos: Any = None,
        audio: Any = None,
        images: Any = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Expand placeholders, tokenise, and compute the media features.

        Args:
            text: prompt(s) with one `<ImageHere>` per video/image and one `<AudioHere>` per audio input.
            videos: all videos/images of the batch in placeholder order (flat), or one list per prompt. Items:
                paths, bytes, file objects, PIL images, uint8 arrays, or `DecodedVideo`s.
            audio: all audio inputs in `<AudioHere>` order (flat or one list per prompt): paths (video or audio
                files), arrays at `sampling_rate`, or `AudioTrack`s.
            images: treated as 1-frame videos, appended after `videos` (they share the `<ImageHere>` placeholder;
                prefer passing them in `videos` in placeholder order).
            **kwargs: `num_frames`, `fps` (video sampling); `sampling_rate` (audio arrays); tokenizer options such as
                `padding`, `padding_side` (use "left" for batched generation), `truncation`, `max_length`,
                `return_tensors` (default "pt").
        """
        if text is None:
            raise ValueError("VideoLlamaProcessor needs `text` with one placeholder per media input.")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("`text` must be a string or a non-empty list of strings.")
        kwargs = _flatten_kwargs(kwargs)
        num_frames = kwargs.pop("num_frames", None)
        fps = kwargs.pop("fps", None)
        sampling_rate = kwargs.pop("sampling_rate", None)
        return_tensors = kwargs.pop("return_tensors", "pt")
        for unused in ("do_sample_frames", "return_metadata", "load_audio_from_video", "video_metadata"):
            kwargs.pop(unused, None)

        n_video_slots = [t.count(VIDEO_TOKEN) for t in texts]
        n_audio_slots = [t.count(AUDIO_TOKEN) for t in texts]
        video_items = _flatten_media(videos, n_video_slots)
        if images is not None:
            video_items += _flatten_media(images, n_video_slots) if not video_items else _as_list(images)
        audio_items = _flatten_media(audio, n_audio_slots)
        if sum(n_video_slots) != len(video_items):
            raise ValueError(
                f"The text has {sum(n_video_slots)} {VIDEO_TOKEN} placeholder(s) but {len(video_items)} video/image "
                "input(s) were given; pass exactly one per placeholder."
            )
        if audio_items and self.num_audio_query_tokens == 0:
            raise ValueError(
                "This processor belongs to a model without an audio branch (num_audio_query_tokens=0); "
                "remove the audio inputs / `load_audio_from_video`."
            )
        if sum(n_audio_slots) != len(audio_items):
            raise ValueError(
                f"The text has {sum(n_audio_slots)} {AUDIO_TOKEN} placeholder(s) but {len(audio_items)} audio "
                "input(s) were given; pass exactly one per placeholder."
            )

        data: dict[str, Any] = {}
        # All media are decoded before anything is tokenised, so a bad file fails the whole call (no half batch).
        if video_items:
            decoded = [self.video_processor.load(v, num_frames=num_frames, fps=fps) for v in video_items]
            video_out = self.video_processor.batch(decoded, return_tensors=None)
            data.update(video_out)
        if audio_items:
            audio_out = self.feature_extractor(audio_items, sampling_rate=sampling_rate, return_tensors="pt")
            data.update(audio_out)

        expanded = [self.expand_placeholders(t) for t in texts]
        if (
            "add_special_tokens" not in kwargs
            and self.tokenizer.bos_token
            and texts[0].startswith(self.tokenizer.bos_token)
        ):
            kwargs["add_special_tokens"] = False
        text_inputs = self.tokenizer(expanded, return_tensors=None, **kwargs)
        self._check_placeholders(text_inputs["input_ids"], n_video_slots, n_audio_slots)
        data.update(text_inputs)
        return BatchFeature(data, tensor_type=return_tensors)

    def _check_placeholders(self, input_ids: list[list[int]], n_video: list[int], n_audio: list[int]) -> None:
        """Every placeholder must survive tokenisation whole, or the model would get a half-filled sample."""
        for i, ids in enumerate(input_ids):
            got_v = sum(1 for t in ids if t == self.video_token_id)
            got_a = sum(1 for t in ids if t == self.audio_token_id)
            want_v = n_video[i] * self.num_video_query_tokens
            want_a = n_audio[i] * self.num_audio_query_tokens
            if (got_v, got_a) != (want_v, want_a):
                raise ValueError(
                    f"Prompt {i}: expected {want_v} video and {want_a} audio placeholder tokens after tokenisation but "
                    f"found {got_v} and {got_a}; truncation (`max_length`) must not cut media placeholders."
                )

    # ------------------------------------------------------------------------------------------------------------
    # Chat
    # ------------------------------------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        conversation: list[dict[str, Any]] | list[list[dict[str, Any]]],
        chat_template: str | None = None,
        load_audio_from_video: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
        audio_fallback: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Render (and optionally tokenise) a conversation in the original demo format.

        Content blocks: `{"type": "text", "text": ...}`, `{"type": "video", "path"|"video"|"url": ...}`,
        `{"type": "image", "path"|"image"|"url": ...}`, `{"type": "audio", "path"|"audio": ...}` and, right after a
        video, an empty `{"type": "audio"}` meaning "this video's audio track" (added automatically with
        `load_audio_from_video=True`). Media are decoded before rendering, because the prompt contains the sampled
        timestamps. `chat_template` may be `"vicuna"` or `"llama2"`. `processor_kwargs` may hold `num_frames`/`fps`
        and tokenizer options. All other arguments are those of `ProcessorMixin.apply_chat_template`.
        """
        processor_kwargs = dict(processor_kwargs or {})
        policy = audio_fallback or self.audio_fallback
        if policy not in ("warn", "error"):
            raise ValueError(f"`audio_fallback` must be 'warn' or 'error', got {policy!r}.")
        if isinstance(chat_template, str) and chat_template in _TEMPLATE_FILES and not _is_named(self, chat_template):
            chat_template = load_chat_template(chat_template)
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = copy.copy(conversation) if batched else [conversation]
        prepared = [
            self.prepare_conversation(
                conv,
                load_audio_from_video,
                policy,
                processor_kwargs.get("num_frames"),
                processor_kwargs.get("fps"),
            )
            for conv in conversations
        ]
        processor_kwargs.pop("num_frames", None)
        processor_kwargs.pop("fps", None)
        return super().apply_chat_template(
            prepared if batched else prepared[0],
            chat_template=chat_template,
            load_audio_from_video=False,
            processor_kwargs=processor_kwargs,
            **kwargs,
        )

    def prepare_conversation(
        self, conversation: list[dict[str, Any]], load_audio: bool, policy: str, num_frames: Any, fps: Any
    ) -> list[dict[str, Any]]:
        """Decode every media block (and audio tracks) so the template can render timestamps and audio decisions.

        Returns the conversation with decoded media in place; rendering it again (`apply_chat_template`) decodes
        nothing. `load_audio` adds each video's sound track; `policy` (`"warn"`/`"error"`) says what a missing or
        unusable track does. Used by `apply_chat_template`, `VideoLlamaChat`, the training collator and the CLI.
        """
        out = []
        for message in conversation:
            message = dict(message)
            content = message.get("content")
            if isinstance(content, list):
                blocks: list[dict[str, Any]] = []
                for index, block in enumerate(content):
                    block = dict(block)
                    kind = block.get("type")
                    following = content[index + 1] if index + 1 < len(content) else None
                    pairs_audio = (
                        isinstance(following, dict)
                        and following.get("type") == "audio"
                        and _source_of(following) is None
                    )
                    if kind in ("video", "image"):
                        source = _source_of(block)
                        if source is None:
                            raise ValueError(f"A {kind} block needs a 'path', '{kind}' or 'url' entry: {block!r}.")
                        decoded = self.video_processor.load(source, num_frames=num_frames, fps=fps)
                        block.pop("url", None)
                        block.pop("path", None)
                        block[kind] = decoded
                        if kind == "video" and decoded.kind == "image":
                            block["type"] = kind = "image"
                            block["image"] = block.pop("video")
                        if kind == "video" and decoded.metadata.fps:
                            block["frames_message"] = frames_message(decoded.metadata)
                        blocks.append(block)
                        if kind == "video" and (load_audio or pairs_audio):
                            block["audio_requested"] = True
                            track = self._audio_track_or_none(source, policy)
                            if track is not None:
                                blocks.append({"type": "audio", "audio": track, "from_video": True})
                    elif kind == "audio":
                        source = _source_of(block)
                        if source is None:
                            # "this video's audio": handled (or dropped with a warning) with the video block.
                            if not (
                                blocks
                                and blocks[-1].get("type") in ("video", "audio")
                                and blocks[-1].get("audio_requested", blocks[-1].get("from_video"))
                            ):
                                raise ValueError("An empty {'type': 'audio'} block must follow a video block.")
                            continue
                        track = (
                            source if isinstance(source, AudioTrack) else self.feature_extractor.fetch_audio(source)
                        )
                        blocks.append({"type": "audio", "audio": track})
                    else:
                        blocks.append(block)
                message["content"] = blocks
            out.append(message)
        return out

    def _audio_track_or_none(self, source: Any, policy: str) -> AudioTrack | None:
        """Decode a video's audio track; on a missing/unusable track warn (or raise with `policy="error"`)."""
        try:
            track = self.feature_extractor.fetch_audio(source)
            rate = self.feature_extractor.sampling_rate
            if resampled_length(track.waveform.shape[-1], track.sample_rate, rate) < 400:
                raise AudioTooShortError(
                    f"The audio track of {describe_source(source)} is too short ({track.waveform.shape[-1]} samples at "
                    f"{track.sample_rate} Hz) for one 25 ms fbank window."
                )
            return track
        except NoAudioTrackError as error:
            if policy == "error":
                raise
            logger.warning(
                "%s Using the video-only prompt (load_audio_from_video=True, audio_fallback='warn').", error
            )
            return None

    def _multimodal_inputs_from_conversations(
        self,
        conversations: list[list[dict[str, Any]]],
        audio_loading_params: dict,
        load_audio_from_video: bool = False,
    ):
        """Collect the media already decoded by `prepare_conversation`, in placeholder order."""
        batch_videos, batch_audios = [], []
        for conversation in conversations:
            videos = []
            for message in conversation:
                content = message.get("content")
                if not isinstance(content, list):
                    continue
                for block in content:
                    if block.get("type") in ("video", "image"):
                        videos.append(block[block["type"]])
                    elif block.get("type") == "audio":
                        batch_audios.append(block["audio"])
            batch_videos.append(videos)
        return [[] for _ in conversations], batch_videos, batch_audios, {}

    def expand_placeholders(self, text: str) -> str:
        """Each `<ImageHere>` / `<AudioHere>` of a rendered prompt repeated once per query token of the model."""
        return text.replace(VIDEO_TOKEN, VIDEO_TOKEN * self.num_video_query_tokens).replace(
            AUDIO_TOKEN, AUDIO_TOKEN * self.num_audio_query_tokens
        )

    def original_prompt(self, prompt: str) -> str:
        """The prompt as the original demo wrote it (`<AudioHere>` -> `<ImageHere>`), e.g. to compare strings."""
        return prompt.replace(AUDIO_TOKEN, VIDEO_TOKEN)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values_videos", "video_frames_mask", "input_values"]


def _packaged_templates() -> dict[str, str]:
    """The released templates shipped beside this module.

    As Hub remote code this module sits alone in transformers' module cache without the `.jinja` files; the saved
    processor then brings every template in its own `chat_template` dict, so missing files are not an error here.
    """
    named = {}
    for name in _TEMPLATE_FILES:
        try:
            named[name] = load_chat_template(name)
        except (OSError, ModuleNotFoundError, TypeError):
            continue
    return named


def _resolve_templates(chat_template: str | dict[str, str] | None) -> dict[str, str]:
    named = _packaged_templates()
    if isinstance(chat_template, dict):
        merged = {**named, **chat_template}
        if "default" not in merged and "vicuna" in merged:
            merged["default"] = merged["vicuna"]
        return merged
    if "vicuna" not in named:
        if chat_template is None or chat_template in _TEMPLATE_FILES:
            raise ValueError(
                f"The packaged chat template files are not available here; pass `chat_template` as Jinja text or "
                f"load the processor from a saved folder (got {chat_template!r})."
            )
        return {"default": chat_template}
    if chat_template is None:
        return {"default": named["vicuna"], **named}
    if chat_template in named:
        return {"default": named[chat_template], **named}
    return {"default": chat_template, **named}


def _is_named(processor: Any, name: str) -> bool:
    return isinstance(processor.chat_template, dict) and name in processor.chat_template


def _source_of(block: dict[str, Any]) -> Any:
    for key in ("video", "image", "audio", "path", "url"):
        if block.get(key) is not None:
            return block[key]
    return None


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _flatten_media(media: Any, slots: list[int]) -> list[Any]:
    """Flat list of media items; accepts a flat list or one list per prompt (as `apply_chat_template` passes)."""
    if media is None:
        return []
    if isinstance(media, (list, tuple)):
        if (
            len(media) == len(slots)
            and all(isinstance(m, (list, tuple)) for m in media)
            and [len(m) for m in media] == slots
        ):
            return [item for per_prompt in media for item in per_prompt]
        return list(media)
    return [media]


def _flatten_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Accept both flat kwargs and transformers' nested `text_kwargs`/`videos_kwargs`/`audio_kwargs`."""
    flat = {k: v for k, v in kwargs.items() if not k.endswith("_kwargs")}
    for key in ("text_kwargs", "videos_kwargs", "audio_kwargs", "common_kwargs"):
        flat.update(kwargs.get(key) or {})
    return flat
