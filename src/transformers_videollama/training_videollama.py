# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""Fine-tuning Video-LLaMA: the paper's stages as presets, freezing, PEFT adapters and a Trainer with throughput logs.

Stages (`presets/training/*.json`, data not code; `load_training_preset(name)`):

    vision-stage1   video/image captions       trains video_qformer (+ its queries), video_position_embedding,
    vision-stage2   image/video instructions                 video_projection
    audio-stage1    video/image captions       trains audio_qformer (+ its queries), audio_position_embedding,
    audio-stage2    image/video instructions                 audio_projection; frames reach the audio Q-Former through
                                               ImageBind's *vision* trunk (`imagebind_pixel_values`)

Everything else (EVA ViT, BLIP-2 Q-Former, ImageBind trunks, the LLM) is frozen, as in the paper; `trainable_modules`
overrides the list. Entirely frozen sub-modules are kept in eval mode while training (no dropout in the frozen
BLIP-2 Q-Former), as the original's `disabled_train` did.

Frozen encoders see the same frames and clips every epoch when training augmentation is off; `cache_frozen_encoders`
memoises their outputs (keyed by the content of each frame / clip), so later epochs skip the EVA ViT, the BLIP-2
Q-Former and the ImageBind audio trunk.

PEFT: `lora_config(...)` targets the LLM's attention and MLP projections and optionally the Q-Formers' attention;
the stage's fully trained modules (Q-Former, positions, projection) go in `modules_to_save`, so one adapter folder
holds everything a stage changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import Trainer
from transformers.trainer_optimizer import is_optimizer_factory
from transformers.video_utils import VideoMetadata

from .collator_videollama import prior_bias_tensors
from .media_io_videollama import AudioTrack
from .video_processing_videollama import DecodedVideo


logger = logging.getLogger(__name__)

__all__ = [
    "LLM_LORA_TARGETS",
    "QFORMER_LORA_TARGETS",
    "FrozenEncoderCache",
    "PrecomputedFeaturesCollator",
    "PrecomputedFrozenFeatures",
    "VideoLlamaTrainer",
    "available_training_presets",
    "cache_frozen_encoders",
    "caption_prompts",
    "freeze_for_training",
    "keep_frozen_modules_in_eval",
    "load_training_preset",
    "lora_config",
    "precompute_frozen_features",
    "trainable_parameter_names",
]

TRAINING_PRESETS_DIR = Path(__file__).resolve().parent / "presets" / "training"
# PEFT regexes (full-name match). The LLM's linear layers only: Q-Former attention layers are named query/key/value.
LLM_LORA_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
QFORMER_LORA_TARGETS = (
    r"model\.{qformers}\.encoder\.layer\.\d+\.(attention|crossattention)\.attention\.(query|key|value)"
)


def available_training_presets() -> list[str]:
    """Names of the shipped stage presets."""
    return sorted(p.stem for p in TRAINING_PRESETS_DIR.glob("*.json"))


def load_training_preset(name: str) -> dict[str, Any]:
    """A stage preset (`vision-stage1`, `vision-stage2`, `audio-stage1`, `audio-stage2`) as a dict."""
    path = TRAINING_PRESETS_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"Unknown training stage {name!r}; available: {', '.join(available_training_presets())}")
    return json.loads(path.read_text())


def caption_prompts(name_or_path: str) -> list[str]:
    """Caption prompts, one per line with one `<ImageHere>`: a shipped set (`"alignment_image"`) or a text file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = TRAINING_PRESETS_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"caption prompts {name_or_path!r}: neither a file nor a shipped prompt set")
    prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"caption prompts file {str(path)!r} is empty")
    return prompts


def _base_model(model: nn.Module) -> nn.Module:
    """The `VideoLlamaForConditionalGeneration` under a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _matches(name: str, module_names: list[str]) -> bool:
    """Whether parameter `name` (e.g. `model.video_qformer.encoder...`) lies inside one of `module_names`."""
    relative = name[len("model.") :] if name.startswith("model.") else name
    return any(relative == m or relative.startswith(m + ".") or name.startswith(m + ".") for m in module_names)


def freeze_for_training(model: nn.Module, trainable_modules: list[str]) -> list[str]:
    """Freeze every parameter except those inside `trainable_modules` (names relative to `model.model`, e.g.
    `"video_qformer"`, or full names such as `"lm_head"`); return the trainable parameter names.

    Raises if a name matches no parameter (e.g. an audio module on a vision-only checkpoint), so a typo cannot
    silently train nothing.
    """
    if not trainable_modules:
        raise ValueError("trainable_modules is empty: nothing would be trained")
    names = [n for n, _ in model.named_parameters()]
    unknown = [m for m in trainable_modules if not any(_matches(n, [m]) for n in names)]
    if unknown:
        tops = sorted({n.split(".")[1] if n.startswith("model.") else n.split(".")[0] for n in names})
        raise ValueError(f"trainable_modules {unknown} match no parameter of this model; its modules: {tops}")
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(_matches(name, trainable_modules))
        if param.requires_grad:
            trainable.append(name)
    keep_frozen_modules_in_eval(model)
    return trainable


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def keep_frozen_modules_in_eval(model: nn.Module) -> None:
    """Keep the entirely frozen top-level blocks of `model.model` in eval mode during training.

    `Trainer` calls `model.train()`, which would switch on dropout inside frozen blocks (the BLIP-2 Q-Former has
    dropout 0.1); the original overrode their `train` with a no-op. A forward pre-hook re-applies eval mode to the
    blocks that hold no trainable parameter at every forward, so it also holds under PEFT and DDP wrappers.
    Idempotent.
    """
    base = _base_model(model)
    inner = getattr(base, "model", base)
    if getattr(base, "_videollama_eval_hook", None) is not None:
        base._videollama_eval_hook.remove()

    def hook(module: nn.Module, args: Any) -> None:
        if not module.training:
            return
        for child in inner.children():
            if child.training and not any(p.requires_grad for p in child.parameters()):
                child.eval()

    base._videollama_eval_hook = base.register_forward_pre_hook(hook)


class FrozenEncoderCache:
    """Memoised outputs of Video-LLaMA's frozen encoders, one entry per frame or audio clip, keyed by its content.

    The paper's stages train only the video/audio Q-Formers, positions and projections; the EVA ViT + BLIP-2 Q-Former
    (per frame) and the ImageBind audio trunk (per clip) are frozen, so without augmentation they compute the same
    outputs for the same media every epoch. Each frame / clip is keyed by a BLAKE2b digest of its bytes, shape and
    dtype: a changed input can never be served a stale output, and an identical frame in two videos is computed once.
    Only encoders without trainable parameters are memoised, and only while in eval mode (no dropout); misses run
    under `torch.no_grad()` (nothing upstream of a frozen encoder trains). When the stored outputs reach `max_bytes`
    no new entry is added (a warning says so) and misses are computed every time.

    Install with `cache_frozen_encoders(model)`; `remove()` restores the model's own methods. `stats()` counts hits.
    """

    _METHODS = {
        "frames": ("_encode_frames", ("vision_tower", "qformer")),
        "audio": ("_encode_audio_clips", ("audio_tower",)),
    }

    def __init__(self, model: nn.Module, max_bytes: int = 4 * 1024**3):
        inner = getattr(_base_model(model), "model", None)
        if inner is None or not hasattr(inner, "_encode_frames"):
            raise TypeError(f"cache_frozen_encoders needs a Video-LLaMA model, got {type(model).__name__}")
        self.inner, self.max_bytes, self.bytes = inner, int(max_bytes), 0
        self._store: dict[bytes, torch.Tensor] = {}
        self._counts = {kind: {"hits": 0, "misses": 0} for kind in self._METHODS}
        self._installed: list[str] = []
        self._full_warned = False
        skipped = []
        for kind, (method, modules) in self._METHODS.items():
            blocks = [getattr(inner, name) for name in modules if hasattr(inner, name)]
            if len(blocks) != len(modules):
                continue  # e.g. no audio branch
            trainable = [n for n, b in zip(modules, blocks) if any(p.requires_grad for p in b.parameters())]
            if trainable:
                skipped.append(f"{kind} ({', '.join(trainable)} trains)")
                continue
            setattr(inner, method, self._memoised(kind, getattr(inner, method), blocks))
            self._installed.append(method)
        if not self._installed:
            raise ValueError(
                "cache_frozen_encoders: no frozen encoder to cache: "
                + "; ".join(skipped)
                + ". Their outputs change every step; freeze them (the paper's stages do) or do not cache."
            )
        if skipped:
            logger.info("cache_frozen_encoders: not caching %s", "; ".join(skipped))

    def _memoised(self, kind: str, compute: Callable, blocks: list[nn.Module]) -> Callable:
        # frames: (M, 3, H, W) -> (M, Q, D), one entry per frame; audio: (N, S, 1, mel, time) -> (N, S, P), per clip
        per_item_dims = 1 if kind == "frames" else 2

        def cached(inputs: torch.Tensor) -> torch.Tensor:
            if any(block.training for block in blocks):
                return compute(inputs)
            items = inputs.reshape(-1, *inputs.shape[per_item_dims:])
            keys = [_content_key(kind, item) for item in items]
            # each distinct missing input computed once (identical frames / clips in a batch share one output)
            missing: dict[bytes, int] = {}  # key -> its first position in the batch
            for i, key in enumerate(keys):
                if key not in self._store and key not in missing:
                    missing[key] = i
            fresh: dict[bytes, torch.Tensor] = {}
            if missing:
                index = torch.tensor(list(missing.values()), device=inputs.device)
                with torch.no_grad():
                    if kind == "frames":
                        outputs = compute(items.index_select(0, index))
                    else:  # the trunk takes (N, S, ...): the missing clips as one audio of len(missing) clips
                        outputs = compute(items.index_select(0, index)[None])[0]
                for key, output in zip(missing, outputs):
                    fresh[key] = output
                    self._add(key, output)
            self._counts[kind]["hits"] += len(keys) - len(missing)
            self._counts[kind]["misses"] += len(missing)
            stacked = torch.stack([fresh[key] if key in fresh else self._store[key] for key in keys])
            return stacked.reshape(*inputs.shape[:per_item_dims], *stacked.shape[1:])

        return cached

    def _add(self, key: bytes, output: torch.Tensor) -> None:
        size = output.numel() * output.element_size()
        if self.bytes + size > self.max_bytes:
            if not self._full_warned:
                logger.warning(
                    "cache_frozen_encoders: the cache is full (%.2f GB); further frames/clips are computed every time",
                    self.bytes / 1024**3,
                )
                self._full_warned = True
            return
        self._store[key] = output.detach().clone()  # own storage (not a view keeping the whole batch alive)
        self.bytes += size

    def stats(self) -> dict[str, Any]:
        """Hits and misses per encoder, entries and bytes held."""
        return {**{k: dict(v) for k, v in self._counts.items()}, "entries": len(self._store), "bytes": self.bytes}

    def remove(self) -> None:
        """Restore the model's own encoder methods and drop the stored outputs."""
        for method in self._installed:
            self.inner.__dict__.pop(method, None)
        self._installed, self._store, self.bytes = [], {}, 0


def _content_key(kind: str, item: torch.Tensor) -> bytes:
    data = item.detach().contiguous()
    if data.device.type != "cpu":
        data = data.cpu()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().data, digest_size=20)
    digest.update(f"{kind}|{tuple(item.shape)}|{item.dtype}".encode())
    return digest.digest()


def cache_frozen_encoders(model: nn.Module, max_bytes: int = 4 * 1024**3) -> FrozenEncoderCache:
    """Memoise the frozen frame encoder and audio trunk of `model` (a Video-LLaMA, PEFT-wrapped or not) while training.

    Call it after freezing (`freeze_for_training`): encoders that train are left alone, and if none is frozen it
    raises. Worth it when the same media come back every epoch (no training augmentation): later epochs then run
    only what trains. Returns the `FrozenEncoderCache` (see its `stats()` and `remove()`).
    """
    return FrozenEncoderCache(model, max_bytes=max_bytes)


class PrecomputedFrozenFeatures(torch.utils.data.Dataset):
    """Training examples whose media already went through the frozen encoders: token ids, labels, attention mask and
    the frozen outputs (`frame_query_embeds` (V, T, Q, Dq) per video, `audio_clip_embeds` (A, S, P) per audio track).

    Made by `precompute_frozen_features`; batch it with `PrecomputedFeaturesCollator`.
    """

    def __init__(self, items: list[dict[str, torch.Tensor]], hits: int = 0, misses: int = 0):
        self.items = items
        self.hits = hits  # records served by a `cache_dir` (nothing decoded or encoded for them)
        self.misses = misses  # records computed and written to it

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.items[index]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for item in self.items for t in item.values())


class PrecomputedFeaturesCollator:
    """Batches of `PrecomputedFrozenFeatures`: right-padded ids (`pad_token_id`), labels (-100) and attention mask
    (0); videos concatenated in placeholder order, frames padded to the longest with `video_frames_mask`; audio
    tracks concatenated. The model then runs from the frame position embeddings / the audio positions on."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("The collator got an empty batch.")
        length = max(len(item["input_ids"]) for item in items)
        batch = {
            "input_ids": torch.full((len(items), length), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros(len(items), length, dtype=torch.long),
            "labels": torch.full((len(items), length), -100, dtype=torch.long),
        }
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            for key in ("input_ids", "attention_mask", "labels"):
                batch[key][row, :n] = item[key]
        priors = [
            [
                (*index, bias)
                for index, bias in zip(item["answer_prior_index"].tolist(), item["answer_prior_bias"].tolist())
            ]
            if "answer_prior_index" in item
            else []
            for item in items
        ]
        batch.update(prior_bias_tensors(priors))
        videos = [video for item in items if "frame_query_embeds" in item for video in item["frame_query_embeds"]]
        if videos:  # each (T_i, Q, Dq)
            frames = max(video.shape[0] for video in videos)
            batch["frame_query_embeds"] = videos[0].new_zeros(len(videos), frames, *videos[0].shape[1:])
            batch["video_frames_mask"] = torch.zeros(len(videos), frames, dtype=torch.long)
            for i, video in enumerate(videos):
                batch["frame_query_embeds"][i, : video.shape[0]] = video
                batch["video_frames_mask"][i, : video.shape[0]] = 1
        audios = [item["audio_clip_embeds"] for item in items if "audio_clip_embeds" in item]
        if audios:
            if len({audio.shape[1:] for audio in audios}) > 1:
                raise ValueError(f"audio tracks with different clip counts in one batch: {[a.shape for a in audios]}")
            batch["audio_clip_embeds"] = torch.cat(audios)
        return batch


def precompute_frozen_features(
    model: nn.Module,
    dataset: Any,
    collator: Any,
    batch_size: int = 16,
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> PrecomputedFrozenFeatures:
    """Decode every record of `dataset` once and run the frozen encoders on it once: the paper's stages train only
    what comes after them, so with the same frames and clips every epoch nothing before the frame position embedding
    (EVA ViT + BLIP-2 Q-Former per frame) or the audio clip position (ImageBind audio trunk per clip) needs to run,
    or even be decoded, again.

    `collator` (a `VideoLlamaDataCollator`) renders and tokenises each record exactly as training would; its media
    are decoded in `num_workers` DataLoader workers and encoded here, in eval mode and without gradients. The result
    holds only token ids and the encoders' small outputs (the bundled model's 4000 training videos: ~150 MB).

    Refused when something would differ between epochs: training augmentation (new frames each epoch), caption
    prompts drawn per caption record, an encoder that trains, or the audio branch fed with frames (ImageBind's vision
    trunk). Under `accelerate launch` every process computes the whole set.

    `cache_dir` keeps each media file's frozen outputs on disk (one safetensors file per video / audio track, with
    what the prompt text needs: the sampled frame indices and frame rate), so a later call on the same files skips
    their decoding and the encoders: stage 2 after stage 1 on the same videos, a rerun with other hyperparameters.
    An entry is found only for the same file (path, size, modification time), the same frozen encoder weights
    (a hash of them), dtype and frame / audio settings; anything else is computed and stored. The result's `hits`
    and `misses` count the records served from and written to it.
    """
    from torch.utils.data import DataLoader

    base = _base_model(model)
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "_encode_frames"):
        raise TypeError(f"precompute_frozen_features needs a Video-LLaMA model, got {type(model).__name__}")
    if getattr(collator.processor.video_processor, "do_train_augmentation", False):
        raise ValueError(
            "precompute_frozen_features: training augmentation is on, so every epoch sees new frames; turn it off"
        )
    if getattr(collator, "audio_branch_from_images", False):
        raise ValueError(
            "precompute_frozen_features does not cover the audio branch fed with frames (ImageBind vision)"
        )
    for name in ("vision_tower", "qformer", "audio_tower"):
        block = getattr(inner, name, None)
        if block is not None and any(p.requires_grad for p in block.parameters()):
            raise ValueError(f"precompute_frozen_features: {name} trains, so its outputs change every step")

    store = _FrozenFeatureStore(cache_dir, inner, collator) if cache_dir is not None else None
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_PrecomputeBatch(collator, store),
    )
    blocks = [b for b in (inner.vision_tower, inner.qformer, getattr(inner, "audio_tower", None)) if b is not None]
    modes = [b.training for b in blocks]
    for block in blocks:
        block.eval()
    items: list[dict[str, torch.Tensor]] = []
    hits = misses = 0
    started = time.perf_counter()
    try:
        with torch.no_grad():
            for entries, batch in loader:
                hits += sum("ready" in entry for entry in entries)
                misses += sum(bool(entry.get("store")) for entry in entries)
                items += _encode_precompute_batch(inner, entries, batch, store)
    finally:
        for block, mode in zip(blocks, modes):
            block.train(mode)
    result = PrecomputedFrozenFeatures(items, hits, misses)
    logger.info(
        "precompute_frozen_features: %d examples in %.1f s (%.1f MB)%s",
        len(items),
        time.perf_counter() - started,
        result.nbytes / 1e6,
        f"; cache {cache_dir}: {hits} served, {misses} stored" if store is not None else "",
    )
    return result


class _PrecomputeBatch:
    """DataLoader collate_fn (picklable). Per record: its ids/labels and media counts, or, when the store holds its
    media, the finished item ("ready"); then the media tensors of the records still to encode."""

    def __init__(self, collator: Any, store: _FrozenFeatureStore | None = None):
        self.collator = collator
        self.store = store

    def __call__(self, examples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
        entries: list[dict[str, Any]] = []
        to_encode = []
        for example in examples:
            if getattr(self.collator, "caption_prompts", None) and not example.get("conversations"):
                raise ValueError(
                    "precompute_frozen_features: caption records get a caption prompt drawn anew every epoch; "
                    "precomputing would fix one draw per record. Train captions without prompts or do not precompute"
                )
            found = self.store.lookup(example) if self.store is not None else None
            if found is not None:  # text rendered from the stored frame indices; nothing decoded, nothing encoded
                stand_in, outputs = found
                encoded = self.collator.encode(stand_in)
                entries.append({"ready": {**_text_tensors(encoded), **outputs}})
                continue
            encoded = self.collator.encode(example)
            to_encode.append(encoded)
            entry = {**_text_tensors(encoded), "videos": len(encoded.videos), "audios": len(encoded.audios)}
            if self.store is not None:
                entry["store"] = self.store.keys_for(example, encoded)
            entries.append(entry)
        batch = self.collator.pad(to_encode) if to_encode else {}
        return entries, {k: v for k, v in batch.items() if k not in _TEXT_KEYS}


_TEXT_KEYS = ("input_ids", "attention_mask", "labels", "answer_prior_index", "answer_prior_bias")


def _text_tensors(encoded: Any) -> dict[str, torch.Tensor]:
    tensors = {
        "input_ids": torch.tensor(encoded.input_ids),
        "attention_mask": torch.tensor(encoded.attention_mask),
        "labels": torch.tensor(encoded.labels),
    }
    if encoded.priors:  # (n, 2) position, token id; (n,) bias
        tensors["answer_prior_index"] = torch.tensor([entry[:2] for entry in encoded.priors], dtype=torch.long)
        tensors["answer_prior_bias"] = torch.tensor([entry[2] for entry in encoded.priors], dtype=torch.float32)
    return tensors


def _encode_precompute_batch(
    inner: nn.Module,
    entries: list[dict[str, Any]],
    batch: dict[str, torch.Tensor],
    store: _FrozenFeatureStore | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Frozen encoders on a collated batch, split back per record (outputs kept in the encoders' dtype, on CPU);
    records already served by the store pass through, new outputs are written to it."""
    frame_outputs: list[torch.Tensor] = []
    if "pixel_values_videos" in batch:
        pixels = batch["pixel_values_videos"]  # (V, T, 3, H, W)
        frames_mask = batch.get("video_frames_mask")
        lengths = frames_mask.sum(-1).tolist() if frames_mask is not None else [pixels.shape[1]] * len(pixels)
        real = torch.cat([video[:n] for video, n in zip(pixels, lengths)])  # padded frames are never encoded
        device = inner.vision_tower.embeddings.patch_embedding.weight.device
        dtype = inner.vision_tower.embeddings.patch_embedding.weight.dtype
        queries = inner._encode_frames(real.to(device=device, dtype=dtype)).cpu()  # (sum T_i, Q, Dq)
        frame_outputs = list(queries.split(lengths))
    clip_outputs: list[torch.Tensor] = []
    if "input_values" in batch:
        device = next(inner.audio_tower.parameters()).device
        dtype = next(inner.audio_tower.parameters()).dtype
        clip_outputs = list(inner._encode_audio_clips(batch["input_values"].to(device=device, dtype=dtype)).cpu())
    items = []
    for entry in entries:
        # copies: a tensor from a DataLoader worker lives in shared memory and holds a file descriptor as long as
        # it lives (thousands of records x several tensors would exhaust the process's limit)
        if "ready" in entry:
            items.append({k: v.clone() for k, v in entry["ready"].items()})
            continue
        item = {k: entry[k].clone() for k in _TEXT_KEYS if k in entry}
        if entry["videos"]:  # the collator gives a record at most one video
            taken, frame_outputs = frame_outputs[: entry["videos"]], frame_outputs[entry["videos"] :]
            item["frame_query_embeds"] = torch.stack(taken)  # (1, T, Q, Dq): a copy, not a view of the batch
        if entry["audios"]:
            taken, clip_outputs = clip_outputs[: entry["audios"]], clip_outputs[entry["audios"] :]
            item["audio_clip_embeds"] = torch.stack(taken)  # (A, S, P)
        if store is not None and entry.get("store"):
            store.save(entry["store"], item)
        items.append(item)
    return items


class _FrozenFeatureStore:
    """`precompute_frozen_features(cache_dir=...)`: a folder of frozen-encoder outputs, one safetensors file per video
    (`frame_query_embeds` (T, Q, Dq) + its kind and `VideoMetadata`, which the prompt's timestamp sentence needs) and
    per audio track (`audio_clip_embeds` (S, P)).

    A file's name hashes the media file (real path, size, modification time) with everything its outputs depend on:
    the frozen encoders' weights (a hash of every tensor), their dtype, and the video processor's or feature
    extractor's settings and the frame count. Only strings are kept, so it travels to DataLoader workers.
    """

    def __init__(self, folder: str | os.PathLike, inner: nn.Module, collator: Any):
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        processor = collator.processor
        frames_dtype = inner.vision_tower.embeddings.patch_embedding.weight.dtype
        self.video_salt = _digest(
            {
                "version": _STORE_VERSION,
                "encoders": _weights_digest([inner.vision_tower, inner.qformer]),
                "dtype": str(frames_dtype),
                "video_processor": processor.video_processor.to_dict(),
                "num_frames": collator.num_frames,
            }
        )
        audio_tower = getattr(inner, "audio_tower", None)
        self.audio_salt = (
            _digest(
                {
                    "version": _STORE_VERSION,
                    "encoders": _weights_digest([audio_tower]),
                    "dtype": str(next(audio_tower.parameters()).dtype),
                    "feature_extractor": processor.feature_extractor.to_dict(),
                }
            )
            if audio_tower is not None and getattr(processor, "feature_extractor", None) is not None
            else None
        )
        self.sampling_rate = getattr(getattr(processor, "feature_extractor", None), "sampling_rate", 16000)

    def _path(self, salt: str | None, source: Any) -> str | None:
        """The entry's file for a media file, or None when `source` is not a file (bytes, arrays, decoded media)."""
        if salt is None or not isinstance(source, (str, os.PathLike)):
            return None
        try:
            stat = os.stat(source)
        except OSError:
            return None
        name = _digest([salt, os.path.realpath(source), stat.st_size, stat.st_mtime_ns])
        return os.path.join(self.folder, name + ".safetensors")

    def _paths(self, example: dict[str, Any]) -> tuple[str | None, str | None, str | None] | None:
        """(record field of the video, its entry, the audio's entry); None when a medium cannot be stored."""
        field_name, video, audio = _record_media(example)
        if video is None and audio is None:
            return None
        video_path = self._path(self.video_salt, video) if video is not None else None
        audio_path = self._path(self.audio_salt, audio) if audio is not None else None
        if (video is not None and video_path is None) or (audio is not None and audio_path is None):
            return None
        return field_name, video_path, audio_path

    def lookup(self, example: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """The record with its media replaced by stand-ins that carry what the text needs (frame indices, frame
        rate, kind), and the stored outputs; None unless every medium of the record is stored."""
        paths = self._paths(example)
        if paths is None or not all(os.path.isfile(p) for p in paths[1:] if p is not None):
            return None
        field_name, video_path, audio_path = paths
        stand_in, outputs = dict(example), {}
        try:
            if video_path is not None:
                features, meta = _read_entry(video_path)
                metadata = VideoMetadata(**meta["metadata"])
                frames = np.zeros((len(metadata.frames_indices or [0]), 1, 1, 3), np.uint8)
                stand_in[field_name] = DecodedVideo(frames, metadata, meta["kind"], meta["source_name"])
                outputs["frame_query_embeds"] = features.unsqueeze(0)  # (1, T, Q, Dq)
            if audio_path is not None:
                features, meta = _read_entry(audio_path)
                silent = np.zeros((1, 400), np.float32)  # never encoded: its outputs are the stored ones
                stand_in["audio"] = AudioTrack(silent, self.sampling_rate, meta["source_name"])
                outputs["audio_clip_embeds"] = features.unsqueeze(0)  # (1, S, P)
        except Exception as error:  # an unreadable entry (e.g. truncated by hand): compute the record again
            logger.warning("precompute_frozen_features: cache entry unreadable (%s); computing it again", error)
            return None
        return stand_in, outputs

    def keys_for(self, example: dict[str, Any], encoded: Any) -> dict[str, Any]:
        """Where a record's new outputs go, with the metadata of its decoded video ({} when it cannot be stored)."""
        paths = self._paths(example)
        if paths is None:
            return {}
        _, video_path, audio_path = paths
        keys: dict[str, Any] = {}
        if video_path is not None and len(encoded.videos) == 1:
            decoded = encoded.videos[0]
            meta = {
                "kind": decoded.kind,
                "source_name": decoded.source_name,
                "metadata": {f.name: getattr(decoded.metadata, f.name) for f in dataclasses.fields(decoded.metadata)},
            }
            keys["video"] = (video_path, json.dumps(meta, default=_json_number))
        if audio_path is not None and len(encoded.audios) == 1:
            keys["audio"] = (audio_path, json.dumps({"source_name": os.fspath(_record_media(example)[2])}))
        return keys

    def save(self, keys: dict[str, Any], item: dict[str, torch.Tensor]) -> None:
        for kind, name in (("video", "frame_query_embeds"), ("audio", "audio_clip_embeds")):
            if kind in keys and name in item:
                path, meta = keys[kind]
                partial = f"{path}.{os.getpid()}.partial"
                save_file({"features": item[name][0].contiguous()}, partial, metadata={"meta": meta})
                os.replace(partial, path)  # atomic: a reader never sees half a file


_STORE_VERSION = 1


def _record_media(example: dict[str, Any]) -> tuple[str | None, Any, Any]:
    """(field holding the video / image, that source, the audio source) of a record, as the collator reads them."""
    field_name = next((k for k in ("media", "video", "image") if example.get(k)), None)
    video = example[field_name] if field_name else None
    audio = example.get("audio")
    if audio in (None, "", False):
        audio = None
    elif audio is True:
        audio = example.get("media") or example.get("video")
    return field_name, video, audio


def _read_entry(path: str) -> tuple[torch.Tensor, dict[str, Any]]:
    with safe_open(path, framework="pt") as handle:
        return handle.get_tensor("features"), json.loads(handle.metadata()["meta"])


def _json_number(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a cache entry")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _weights_digest(modules: list[nn.Module]) -> str:
    """A hash of every tensor (name, dtype, shape, bytes) of `modules`: outputs stored for other weights never match."""
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        for name, tensor in sorted(module.state_dict().items()):
            flat = tensor.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"{index}.{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def lora_config(
    model: nn.Module,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    lora_llm: bool = True,
    lora_qformers: bool = False,
    modules_to_save: list[str] | None = None,
) -> Any:
    """A `peft.LoraConfig` for Video-LLaMA.

    Args:
        lora_llm: adapters on the LLM's q/k/v/o and MLP projections.
        lora_qformers: adapters on the attention of the video (and audio) Q-Formers, instead of training them fully.
        modules_to_save: modules trained fully and saved with the adapter (typically the stage's trainable modules:
            Q-Former with its queries, position embedding, projection).
    """
    from peft import LoraConfig

    base = _base_model(model)
    patterns = []
    if lora_llm:
        patterns.append(LLM_LORA_TARGETS)
    if lora_qformers:
        qformers = [q for q in ("video_qformer", "audio_qformer") if hasattr(base.model, q)]
        patterns.append(QFORMER_LORA_TARGETS.format(qformers="(" + "|".join(qformers) + ")"))
    if not patterns and not modules_to_save:
        raise ValueError("lora_config: no LoRA target and no modules_to_save: the adapter would train nothing")
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="^(" + "|".join(patterns) + ")$" if patterns else [],
        modules_to_save=list(modules_to_save or []) or None,
        bias="none",
    )


PROJECTION_MODULES = ("video_projection", "audio_projection")


class VideoLlamaTrainer(Trainer):
    """`Trainer` that also logs training throughput (`samples_per_second`) at every logging step, and can train the
    projections into the LLM at their own learning rate.

    Throughput is measured over the window since the previous log: optimizer steps x per-device batch x gradient
    accumulation x processes, divided by wall time (data loading included: it is what a user waits for).

    `projector_learning_rate` (LLaVA's `mm_projector_lr`): the video / audio projections (the linear maps into the
    LLM's embedding space) train at this peak rate, everything else at `args.learning_rate`, both under the same
    schedule. Why: the projection sets the scale of the tokens the LLM reads; at the Q-Formers' rate a small LLM's
    inputs drift to many times its word-embedding norm (the bundled recipe: 9-17x within one stage) and the LLM's
    own attention patterns stop applying to them.

    Answer priors: a batch that carries `answer_prior_index` / `answer_prior_bias` (records with `priors`, see
    `answer_prior_biases`) is trained on the model's next-token loss computed on its logits *plus* those biases
    (a product of experts with the prior), so the model is not taught what the prior already explains; batches
    without them train on the model's own loss, unchanged.
    """

    def __init__(self, *args: Any, projector_learning_rate: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if projector_learning_rate is not None and not projector_learning_rate >= 0:
            raise ValueError(f"projector_learning_rate must be >= 0, got {projector_learning_rate!r}")
        self.projector_learning_rate = projector_learning_rate
        self._window_start: tuple[float, int] | None = None

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None or self.projector_learning_rate is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                projection = any(part in PROJECTION_MODULES for part in name.split("."))
                groups.setdefault((name in decay, projection), []).append(param)
        param_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if decays else 0.0,
                **({"lr": self.projector_learning_rate} if projection else {}),
            }
            for (decays, projection), params in groups.items()
        ]
        if self.optimizer_cls_and_kwargs is not None:  # Trainer(optimizer_cls_and_kwargs=...) as in the base class
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if is_optimizer_factory(optimizer_cls) or {"params", "model"} & set(optimizer_kwargs):
            # optimizers that build their own parameter groups (GaLore, LOMO, Muon, ...) would drop ours
            raise ValueError(f"projector_learning_rate does not combine with optimizer {optimizer_cls!r}")
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        now, step = time.perf_counter(), self.state.global_step
        if "loss" in logs:  # a training log (evaluation logs have eval_* keys)
            if self._window_start is not None and step > self._window_start[1]:
                elapsed = now - self._window_start[0]
                samples = (
                    (step - self._window_start[1])
                    * self.args.per_device_train_batch_size
                    * self.args.gradient_accumulation_steps
                    * max(self.args.world_size, 1)
                )
                logs["samples_per_second"] = round(samples / max(elapsed, 1e-9), 3)
            self._window_start = (now, step)
        super().log(logs, start_time)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The model's own loss, or, for a batch with answer priors (`answer_prior_index` / `answer_prior_bias`
        from the collators, see `answer_prior_biases`), the same next-token loss on the logits plus those biases."""
        index, bias = inputs.pop("answer_prior_index", None), inputs.pop("answer_prior_bias", None)
        if index is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        rows, positions, tokens = index.unbind(-1)
        if len(index) and (rows.max() >= labels.shape[0] or positions.max() >= labels.shape[1] or positions.min() < 1):
            # e.g. a batch split across processes after collation (accelerate's dispatch_batches): rows no longer
            # match; refuse rather than bias the wrong tokens
            raise ValueError(
                f"answer priors point outside the batch (rows < {labels.shape[0]}, positions 1..{labels.shape[1] - 1}"
                f" expected; got rows up to {int(rows.max())}, positions {int(positions.min())}..{int(positions.max())})"
            )
        # the logits at position p - 1 predict the token at p
        logits = outputs.logits.index_put(
            (rows, positions - 1, tokens), bias.to(outputs.logits.dtype), accumulate=True
        )
        unwrapped = self.accelerator.unwrap_model(model)
        kwargs = {"num_items_in_batch": num_items_in_batch} if self.model_accepts_loss_kwargs else {}
        loss = unwrapped.loss_function(
            logits=logits, labels=labels, vocab_size=unwrapped.config.text_config.vocab_size, **kwargs
        )
        outputs.loss = loss
        return (loss, outputs) if return_outputs else loss

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._window_start is None:  # first step of this run (after a resumed state was loaded)
            self._window_start = (time.perf_counter(), self.state.global_step)
        return super().training_step(*args, **kwargs)


def peak_memory_bytes() -> int:
    """Peak GPU memory of this process (CUDA), else its peak resident set size (Linux)."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
