"""Convert the original Video-LLaMA release files into a Hugging Face folder.

Inputs are the files exactly as released (no delta weights, no YAML):

    eva_vit_g.pth                      EVA-CLIP ViT-g (LAVIS, flat state dict, fp16)
    blip2_pretrained_flant5xxl.pth     BLIP-2 Q-Former + ln_vision + query tokens ({'model': ...})
    imagebind_huge.pth                 ImageBind-huge, all six modalities (flat state dict)
    llama/ (HF folder)                 LLaMA-2-chat or Vicuna, as a transformers folder
    VL_*.pth                           vision-branch checkpoint (LAVIS training checkpoint)
    AL_*.pth  (optional)               audio-branch checkpoint

Every tensor of every file is either mapped by a rule of `RULES` or skipped by a named skip rule; anything else, a
missing target or a wrong shape stops the conversion with the list of names. `.pth` files are read with
`torch.load(weights_only=True, mmap=True)` (no pickle code runs, nothing is copied into memory up front) and the
output is written shard by shard, so a 13B release converts without ever holding two copies of the weights.

    python -m transformers_videollama.convert --eva-vit eva_vit_g.pth --blip2 blip2_pretrained_flant5xxl.pth \
        --imagebind imagebind_huge.pth --llama llama-2-7b-chat-hf --vl-checkpoint VL_LLaMA_2_7B_Finetuned.pth \
        --al-checkpoint AL_LLaMA_2_7B_Finetuned.pth --output video-llama-2-7b-hf --dtype bfloat16
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, GenerationConfig


try:  # tqdm ships with transformers' dependencies; progress bars are optional
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

from .configuration_videollama import VideoLlamaConfig
from .processing_videollama import build_videollama_tokenizer


logger = logging.getLogger("transformers_videollama.convert")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_SHARD_SIZE = 5 * 1024**3


class ConversionError(ValueError):
    """A release file does not match the expected layout. The message lists every offending tensor."""


# ----------------------------------------------------------------------------------------------------------------------
# The rename table: (source file, anchored regex on the source key, target key or a skip reason)
# ----------------------------------------------------------------------------------------------------------------------
# fmt: off
_QFORMER_LAYER = [
    (r"bert\.embeddings\.LayerNorm\.(weight|bias)", r"layernorm.\1"),
    (r"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)", r"encoder.layer.\1.\2.attention.\3.\4"),
    (r"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)", r"encoder.layer.\1.\2.output.\3.\4"),
    (r"bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.(dense|LayerNorm)\.(weight|bias)", r"encoder.layer.\1.\2.\3.\4"),
]


def _qformer_rules(source_prefix: str, target: str) -> list[tuple[str, str]]:
    return [(rf"{source_prefix}\.{pattern}", f"model.{target}.{repl}") for pattern, repl in _QFORMER_LAYER]


def _imagebind_trunk_rules(modality: str, target: str) -> list[tuple[str, str]]:
    return [
        (rf"modality_trunks\.{modality}\.blocks\.(\d+)\.attn\.(bias_k|bias_v)", rf"model.{target}.layers.\1.self_attn.\2"),
        (rf"modality_trunks\.{modality}\.blocks\.(\d+)\.attn\.out_proj\.(weight|bias)", rf"model.{target}.layers.\1.self_attn.out_proj.\2"),
        (rf"modality_trunks\.{modality}\.blocks\.(\d+)\.norm_1\.(weight|bias)", rf"model.{target}.layers.\1.layer_norm1.\2"),
        (rf"modality_trunks\.{modality}\.blocks\.(\d+)\.norm_2\.(weight|bias)", rf"model.{target}.layers.\1.layer_norm2.\2"),
        (rf"modality_trunks\.{modality}\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", rf"model.{target}.layers.\1.mlp.\2.\3"),
        (rf"modality_heads\.{modality}\.0\.(weight|bias)", rf"model.{target}.head.layer_norm.\1"),
        (rf"modality_heads\.{modality}\.2\.weight", rf"model.{target}.head.projection.weight"),
    ]


RULES: dict[str, list[tuple[str, str]]] = {
    "eva_vit": [
        (r"cls_token", "model.vision_tower.embeddings.class_embedding"),
        (r"pos_embed", "model.vision_tower.embeddings.position_embedding"),
        (r"patch_embed\.proj\.(weight|bias)", r"model.vision_tower.embeddings.patch_embedding.\1"),
        (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"model.vision_tower.encoder.layers.\1.layer_norm1.\2"),
        (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"model.vision_tower.encoder.layers.\1.layer_norm2.\2"),
        (r"blocks\.(\d+)\.attn\.qkv\.weight", r"model.vision_tower.encoder.layers.\1.self_attn.qkv.weight"),
        (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"model.vision_tower.encoder.layers.\1.self_attn.projection.\2"),
        (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"model.vision_tower.encoder.layers.\1.mlp.\2.\3"),
        # q_bias and v_bias become the fused qkv bias (q, zeros for k, v): handled by _FUSED below
    ],
    "blip2": [
        (r"query_tokens", "model.qformer.query_tokens"),
        (r"ln_vision\.(weight|bias)", r"model.vision_tower.post_layernorm.\1"),
        *_qformer_rules("Qformer", "qformer"),
        (r"t5_proj\.(weight|bias)", "SKIP: BLIP-2 FlanT5 projection, not part of Video-LLaMA"),
        (r"Qformer\.bert\.embeddings\.position_ids", "SKIP: buffer (text position ids, Q-Former has no text input)"),
    ],
    "vl_checkpoint": [
        (r"video_query_tokens", "model.video_qformer.query_tokens"),
        (r"llama_proj\.(weight|bias)", r"model.video_projection.\1"),
        (r"video_frame_position_embedding\.weight", "model.video_position_embedding.weight"),
        *_qformer_rules("video_Qformer", "video_qformer"),
    ],
    "al_checkpoint": [
        (r"audio_query_tokens", "model.audio_qformer.query_tokens"),
        (r"audio_llama_proj\.(weight|bias)", r"model.audio_projection.\1"),
        (r"audio_position_embedding\.weight", "model.audio_position_embedding.weight"),
        *_qformer_rules("audio_Qformer", "audio_qformer"),
    ],
    "imagebind": [
        (r"modality_preprocessors\.audio\.cls_token", "model.audio_tower.embeddings.class_embedding"),
        (r"modality_preprocessors\.audio\.rgbt_stem\.proj\.weight", "model.audio_tower.embeddings.patch_embedding.weight"),
        (r"modality_preprocessors\.audio\.rgbt_stem\.norm_layer\.(weight|bias)", r"model.audio_tower.embeddings.layer_norm.\1"),
        (r"modality_preprocessors\.audio\.pos_embedding_helper\.pos_embed", "model.audio_tower.embeddings.position_embedding"),
        *_imagebind_trunk_rules("audio", "audio_tower"),
        (r"modality_postprocessors\.audio\.1\.log_logit_scale", "CONFIG: audio_config.logit_scale = exp(value)"),
        (r"modality_preprocessors\.vision\.cls_token", "model.imagebind_vision_tower.embeddings.class_embedding"),
        (r"modality_preprocessors\.vision\.rgbt_stem\.proj\.1\.weight", "model.imagebind_vision_tower.embeddings.patch_embedding.weight"),
        (r"modality_preprocessors\.vision\.pos_embedding_helper\.pos_embed", "model.imagebind_vision_tower.embeddings.position_embedding"),
        (r"modality_trunks\.vision\.pre_transformer_layer\.0\.(weight|bias)", r"model.imagebind_vision_tower.pre_layer_norm.\1"),
        *_imagebind_trunk_rules("vision", "imagebind_vision_tower"),
        (r"modality_(preprocessors|trunks|heads|postprocessors)\.(text|depth|thermal|imu)\..*", "SKIP: ImageBind modality Video-LLaMA does not use"),
    ],
    "llama": [
        (r"model\.(.+)", r"model.language_model.\1"),
        (r"lm_head\.weight", "lm_head.weight"),
    ],
}

# Buffers of the training model that LAVIS saved into the VL/AL checkpoints along with the trainable parameters.
_TRAINING_BUFFERS = [
    (r"(Qformer|video_Qformer|audio_Qformer)\.bert\.embeddings\.position_ids", "SKIP: buffer (Q-Former text position ids)"),
    (r"llama_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", "SKIP: buffer (rotary frequencies, recomputed)"),
    (r"audio_encoder\.modality_preprocessors\.text\.mask", "SKIP: buffer (ImageBind text causal mask)"),
    (r"audio_encoder\.modality_postprocessors\.\w+\.1\.log_logit_scale", "SKIP: buffer (ImageBind fixed logit scales; read from imagebind_huge.pth)"),
]
RULES["vl_checkpoint"] += _TRAINING_BUFFERS
RULES["al_checkpoint"] += _TRAINING_BUFFERS
RULES["llama"].insert(0, (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", "SKIP: buffer (old transformers saved rotary frequencies)"))
# fmt: on

# Tensors that need a transform rather than a rename: (source, regex) -> (target template, kind)
#   fuse_qkv_bias: EVA keeps q_bias and v_bias (k has none); BLIP-2's fused qkv bias is cat(q, zeros, v).
#   split_in_proj: nn.MultiheadAttention's packed in_proj -> separate q/k/v projections (chunk i of 3).
_FUSED = {
    ("eva_vit", r"blocks\.(\d+)\.attn\.(q_bias|v_bias)"): (
        r"model.vision_tower.encoder.layers.\1.self_attn.qkv.bias",
        "fuse_qkv_bias",
    ),
    ("imagebind", r"modality_trunks\.(audio)\.blocks\.(\d+)\.attn\.in_proj_(weight|bias)"): (
        r"model.audio_tower.layers.\2.self_attn.{}_proj.\3",
        "split_in_proj",
    ),
    ("imagebind", r"modality_trunks\.(vision)\.blocks\.(\d+)\.attn\.in_proj_(weight|bias)"): (
        r"model.imagebind_vision_tower.layers.\2.self_attn.{}_proj.\3",
        "split_in_proj",
    ),
}


@dataclass
class TargetTensor:
    """One tensor of the converted model and how to build it from source tensors."""

    name: str
    kind: str  # copy | fuse_qkv_bias | split_in_proj
    sources: list[tuple[str, str]] = field(default_factory=list)  # (source file label, key)
    chunk: int = 0  # for split_in_proj
    shape: tuple[int, ...] = ()


@dataclass
class ConversionPlan:
    targets: dict[str, TargetTensor]
    skipped: dict[tuple[str, str], str]  # (source, key) -> reason


def _match(source: str, key: str) -> tuple[str, str] | None:
    """-> (target or 'SKIP: reason' / 'CONFIG: ...', kind) for a source key, or None when no rule matches."""
    for (src, pattern), (template, kind) in _FUSED.items():
        if src == source and (m := re.fullmatch(pattern, key)):
            return m.expand(template), kind
    for pattern, replacement in RULES[source]:
        if m := re.fullmatch(pattern, key):
            if replacement.startswith(("SKIP", "CONFIG")):
                return replacement, "skip"
            return m.expand(replacement), "copy"
    return None


def plan_conversion(
    sources: dict[str, dict[str, tuple[int, ...]]], include_imagebind_vision: bool = False
) -> ConversionPlan:
    """Map every source tensor (given as name -> shape per source file) to a target, or fail listing the strays.

    Works on shapes only, so it runs on the meta device / on manifests of the real release without any weights.
    Later sources override earlier ones for the same target (the original loads the AL checkpoint after VL).
    """
    targets: dict[str, TargetTensor] = {}
    skipped: dict[tuple[str, str], str] = {}
    unknown: list[str] = []
    for source, keys in sources.items():
        for key, shape in keys.items():
            matched = _match(source, key)
            if matched is None:
                unknown.append(f"{source}: {key} {list(shape)}")
                continue
            target, kind = matched
            if kind == "skip":
                skipped[(source, key)] = target
                continue
            if target.startswith("model.imagebind_vision_tower.") and not include_imagebind_vision:
                skipped[(source, key)] = "SKIP: ImageBind vision trunk (only converted for audio-branch training)"
                continue
            if kind == "split_in_proj":
                for chunk, proj in enumerate(("q", "k", "v")):
                    name = target.format(proj)
                    targets[name] = TargetTensor(name, kind, [(source, key)], chunk, (shape[0] // 3, *shape[1:]))
            elif kind == "fuse_qkv_bias":
                entry = targets.setdefault(target, TargetTensor(target, kind, [], 0, (shape[0] * 3,)))
                entry.sources.append((source, key))
            else:
                targets[target] = TargetTensor(target, "copy", [(source, key)], 0, tuple(shape))
    if unknown:
        raise ConversionError(
            f"{len(unknown)} tensor(s) in the release files match no conversion rule (unexpected):\n  "
            + "\n  ".join(unknown)
        )
    broken = [t.name for t in targets.values() if t.kind == "fuse_qkv_bias" and len(t.sources) != 2]
    if broken:
        raise ConversionError("q_bias/v_bias pair incomplete for: " + ", ".join(broken))
    return ConversionPlan(targets, skipped)


def check_plan(plan: ConversionPlan, expected: dict[str, tuple[int, ...]]) -> None:
    """Compare the plan with the target model's state dict shapes; raise listing missing/unexpected/mis-shaped."""
    missing = sorted(set(expected) - set(plan.targets))
    unexpected = sorted(set(plan.targets) - set(expected))
    wrong = [
        f"{name}: release gives {list(t.shape)}, model expects {list(expected[name])}  (from {t.sources[0][0]}: "
        f"{t.sources[0][1]})"
        for name, t in sorted(plan.targets.items())
        if name in expected and tuple(t.shape) != tuple(expected[name])
    ]
    problems = []
    if missing:
        problems.append(f"missing ({len(missing)}): no release tensor provides\n    " + "\n    ".join(missing))
    if unexpected:
        problems.append(f"unexpected ({len(unexpected)}): not in the model\n    " + "\n    ".join(unexpected))
    if wrong:
        problems.append(f"wrong shape ({len(wrong)}):\n    " + "\n    ".join(wrong))
    if problems:
        raise ConversionError("The release files do not fit the model config:\n  " + "\n  ".join(problems))


def expected_state_dict_shapes(config: VideoLlamaConfig) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of `VideoLlamaForConditionalGeneration(config)`, built on the meta device."""
    from .modeling_videollama import VideoLlamaForConditionalGeneration

    with torch.device("meta"):
        model = VideoLlamaForConditionalGeneration(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------------
# Reading the release files lazily
# ----------------------------------------------------------------------------------------------------------------------
def _torch_load(path: Path) -> dict:
    """torch.load without executing pickled code; memory-mapped when the file format allows it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise ConversionError(f"{path}: cannot be read as a PyTorch checkpoint ({err})") from err
        # Legacy (non-zip) serialisation cannot be memory-mapped; read it normally (still weights_only).
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConversionError(f"{path}: cannot be read safely with weights_only=True ({err})") from err


def _state_dict_of(path: Path, source: str) -> dict[str, torch.Tensor]:
    data = _torch_load(path)
    if source in ("blip2", "vl_checkpoint", "al_checkpoint"):
        if not isinstance(data, dict) or "model" not in data:
            raise ConversionError(f"{path}: expected a LAVIS checkpoint dict with a 'model' entry")
        data = data["model"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConversionError(f"{path}: expected a flat state dict of tensors")
    return data


class _LlamaFolder:
    """Lazy tensor access to a HF LLaMA folder (safetensors, possibly sharded, or pytorch_model*.bin)."""

    def __init__(self, folder: Path):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: the LLaMA/Vicuna folder does not exist")
        self.folder = folder
        self.files = sorted(folder.glob("*.safetensors"))
        self.bins = [] if self.files else sorted(folder.glob("pytorch_model*.bin"))
        if not self.files and not self.bins:
            raise ConversionError(f"{folder}: no *.safetensors or pytorch_model*.bin weight files")
        self._where: dict[str, Path] = {}
        self._bin_cache: dict[Path, dict] = {}
        for f in self.files:
            with safe_open(f, framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
                    self._where[key] = f
        for f in self.bins:
            for key in _torch_load(f):
                self._where[key] = f

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {}
        for key, f in self._where.items():
            if f.suffix == ".safetensors":
                with safe_open(f, framework="pt") as handle:
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
            else:
                shapes[key] = tuple(self._bin(f)[key].shape)
        return shapes

    def _bin(self, f: Path) -> dict:
        if f not in self._bin_cache:
            self._bin_cache = {f: _torch_load(f)}  # keep one (memory-mapped) shard open at a time
        return self._bin_cache[f]

    def get(self, key: str) -> torch.Tensor:
        f = self._where[key]
        if f.suffix == ".safetensors":
            with safe_open(f, framework="pt") as handle:
                return handle.get_tensor(key)
        return self._bin(f)[key]


# ----------------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------------
def default_config_for_release(llama_dir: Path, has_audio_branch: bool) -> VideoLlamaConfig:
    """The released architecture (EVA ViT-g, BERT-base Q-Formers, ImageBind-huge) around the given LLaMA/Vicuna.

    Only the language model differs between the Video-LLaMA releases, and its config travels with its folder.
    """
    text_config = AutoConfig.from_pretrained(llama_dir, local_files_only=True)
    return VideoLlamaConfig(text_config=text_config.to_dict(), has_audio_branch=has_audio_branch)


# ----------------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ReleaseFiles:
    eva_vit: Path
    blip2: Path
    imagebind: Path
    llama: Path
    vl_checkpoint: Path
    al_checkpoint: Path | None = None


def _build_tensor(target: TargetTensor, fetch: Callable[[str, str], torch.Tensor]) -> torch.Tensor:
    if target.kind == "copy":
        return fetch(*target.sources[0])
    if target.kind == "split_in_proj":
        packed = fetch(*target.sources[0])
        return packed.chunk(3, dim=0)[target.chunk]
    if target.kind == "fuse_qkv_bias":
        parts = {key.rsplit(".", 1)[-1]: fetch(source, key) for source, key in target.sources}
        q_bias, v_bias = parts["q_bias"], parts["v_bias"]
        return torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    raise AssertionError(target.kind)


def _shard_plan(names: list[str], sizes: dict[str, int], max_shard_size: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    current = 0
    for name in names:
        if shards[-1] and current + sizes[name] > max_shard_size:
            shards.append([])
            current = 0
        shards[-1].append(name)
        current += sizes[name]
    return shards


def convert_release(
    files: ReleaseFiles,
    output_dir: str | os.PathLike,
    dtype: str = "bfloat16",
    config: VideoLlamaConfig | None = None,
    chat_format: str = "auto",
    include_imagebind_vision: bool = False,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    save_processor: bool = True,
    self_check: bool = True,
    progress: bool = True,
) -> Path:
    """Convert the release files to a `from_pretrained`-ready folder; returns its path.

    Args:
        files: the release files (see `ReleaseFiles`).
        output_dir: where to write the folder (created).
        dtype: `float32`, `bfloat16` or `float16` for the saved weights.
        config: the architecture; by default the released one around the LLaMA folder's own config.
        chat_format: `vicuna`, `llama2` or `auto` (LLaMA-2 when the LLM has 4096 positions, else Vicuna).
        include_imagebind_vision: also convert ImageBind's vision trunk (needed to train the audio branch).
        max_shard_size: bytes per safetensors shard.
        save_processor: also save tokenizer (with the placeholder tokens), processors and chat template.
        self_check: reload the result and run one forward pass.
        progress: show a progress bar.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    output_dir = Path(output_dir)
    for label in ("eva_vit", "blip2", "imagebind", "vl_checkpoint", "al_checkpoint"):
        path = getattr(files, label)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"--{label.replace('_', '-')}: {path} is not a file")

    # 1. open every source lazily and plan the mapping on names and shapes
    llama = _LlamaFolder(Path(files.llama))
    if save_processor and not (Path(files.llama) / "tokenizer.model").is_file():  # fail before hours of streaming
        raise FileNotFoundError(f"--llama: {files.llama} has no tokenizer.model (needed for the tokenizer)")
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    for label in ("eva_vit", "blip2", "imagebind", "vl_checkpoint", "al_checkpoint"):
        path = getattr(files, label)
        if path is not None:
            loaded[label] = _state_dict_of(Path(path), label)
    sources = {label: {k: tuple(v.shape) for k, v in sd.items()} for label, sd in loaded.items()}
    sources["llama"] = llama.shapes()
    has_audio = files.al_checkpoint is not None
    plan = plan_conversion(sources, include_imagebind_vision=include_imagebind_vision)

    # 2. the config: the given one, or the released architecture; the audio logit scale comes from the file
    if config is None:
        config = default_config_for_release(Path(files.llama), has_audio_branch=has_audio)
    config = VideoLlamaConfig(**config.to_dict())  # private copy
    if has_audio != config.has_audio_branch:
        raise ConversionError(
            f"config.has_audio_branch={config.has_audio_branch} but an audio-branch checkpoint was "
            f"{'given' if has_audio else 'not given'}"
        )
    if not has_audio:  # without the AL checkpoint, the audio trunk of imagebind_huge.pth is not used either
        for name in [n for n in plan.targets if n.startswith("model.audio_tower.")]:
            t = plan.targets.pop(name)
            plan.skipped[t.sources[0]] = "SKIP: audio trunk (no audio-branch checkpoint given)"
    if include_imagebind_vision and config.imagebind_vision_config is None:
        config.imagebind_vision_config = _imagebind_vision_config_from(sources["imagebind"], config)
    if has_audio:
        log_scale = loaded["imagebind"]["modality_postprocessors.audio.1.log_logit_scale"]
        config.audio_config.logit_scale = float(min(math.exp(float(log_scale)), 100.0))
    config.dtype = torch_dtype
    check_plan(plan, expected_state_dict_shapes(config))

    # 3. stream tensors into shards: cast, write a shard, free it
    def fetch(source: str, key: str) -> torch.Tensor:
        return llama.get(key) if source == "llama" else loaded[source][key]

    output_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(plan.targets)
    sizes = {n: math.prod(plan.targets[n].shape) * torch_dtype.itemsize for n in names}
    shards = _shard_plan(names, sizes, max_shard_size)
    weight_map = {}
    bar = tqdm(total=len(names), desc="Converting tensors", disable=not progress) if tqdm else None
    for index, shard_names in enumerate(shards, start=1):
        filename = "model.safetensors" if len(shards) == 1 else f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        shard = {}
        for name in shard_names:
            shard[name] = _build_tensor(plan.targets[name], fetch).to(torch_dtype).contiguous()
            weight_map[name] = filename
            if bar:
                bar.update(1)
        save_file(shard, str(output_dir / filename), metadata={"format": "pt"})
        del shard
        gc.collect()
    if bar:
        bar.close()
    if len(shards) > 1:
        index_data = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (output_dir / "model.safetensors.index.json").write_text(json.dumps(index_data, indent=2, sort_keys=True))
    loaded.clear()  # drop the memory-mapped sources before the self-check loads the result
    gc.collect()

    # 4. config, generation config, tokenizer + processor
    fmt = _resolve_chat_format(chat_format, config)
    tokenizer = build_videollama_tokenizer(Path(files.llama)) if save_processor or fmt == "vicuna" else None
    if save_processor:
        # The tokenizer decides the placeholder ids (vocab_size, vocab_size + 1); keep the config in sync.
        config.video_token_index, config.audio_token_index = tokenizer.convert_tokens_to_ids(
            ["<ImageHere>", "<AudioHere>"]
        )
    config.architectures = ["VideoLlamaForConditionalGeneration"]
    config.save_pretrained(output_dir)
    _generation_config(Path(files.llama), fmt, tokenizer).save_pretrained(output_dir)
    if save_processor:
        _save_processor(tokenizer, config, fmt, output_dir)
    logger.info(
        "Converted %d tensors (%d skipped by named rules) into %s (%s, %d shard(s))",
        len(names),
        len(plan.skipped),
        output_dir,
        dtype,
        len(shards),
    )
    if self_check:
        run_self_check(output_dir)
    return output_dir


def _imagebind_vision_config_from(shapes: dict[str, tuple[int, ...]], config: VideoLlamaConfig):
    from .configuration_imagebind import ImageBindVisionConfig

    pos = shapes["modality_preprocessors.vision.pos_embedding_helper.pos_embed"]
    stem = shapes["modality_preprocessors.vision.rgbt_stem.proj.1.weight"]  # (D, 3, T, p, p)
    blocks = {int(k.split(".")[3]) for k in shapes if k.startswith("modality_trunks.vision.blocks.")}
    hidden = pos[-1]
    ref = ImageBindVisionConfig()
    heads = ref.num_attention_heads if hidden == ref.hidden_size else max(1, hidden // 8)
    return ImageBindVisionConfig(
        hidden_size=hidden,
        num_hidden_layers=len(blocks),
        num_attention_heads=heads,
        intermediate_size=shapes["modality_trunks.vision.blocks.0.mlp.fc1.weight"][0],
        projection_dim=shapes["modality_heads.vision.2.weight"][0],
        patch_size=stem[-1],
        num_frames=stem[2],
        image_size=int(math.isqrt(pos[1] - 1)) * stem[-1],
    )


def _resolve_chat_format(chat_format: str, config: VideoLlamaConfig) -> str:
    if chat_format == "auto":
        chat_format = "llama2" if config.text_config.max_position_embeddings >= 4096 else "vicuna"
        logger.info("chat format: %s (from the LLM's context length; pass --chat-format to override)", chat_format)
    if chat_format not in ("vicuna", "llama2"):
        raise ValueError(f"chat_format must be 'vicuna', 'llama2' or 'auto', got {chat_format!r}")
    return chat_format


def _generation_config(llama_dir: Path, chat_format: str, tokenizer: Any = None) -> GenerationConfig:
    """The LLM's generation config plus the original demo's stop rule (Vicuna: `###`, LLaMA-2: `</s>`).

    The Vicuna rule is stored as extra end-of-sequence ids (the single-token spellings of `###` in this vocabulary)
    rather than `stop_strings`, because `stop_strings` makes a plain `model.generate(**inputs)` fail without a
    tokenizer argument. (The original also stopped on the two-token spelling `##` + `#`; pass
    `stop_strings=["###"], tokenizer=...` to `generate` to get that too.)
    """
    try:
        generation_config = GenerationConfig.from_pretrained(llama_dir, local_files_only=True)
    except OSError:
        generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = 0
    if chat_format == "vicuna":
        vocab = (tokenizer or build_videollama_tokenizer(llama_dir)).get_vocab()
        eos = generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        generation_config.eos_token_id = eos + [vocab[p] for p in ("###", "\u2581###") if p in vocab]
    generation_config.max_new_tokens = 300  # the demo's default
    return generation_config


def _save_processor(tokenizer: Any, config: VideoLlamaConfig, chat_format: str, output_dir: Path) -> None:
    from .feature_extraction_videollama import VideoLlamaFeatureExtractor
    from .processing_videollama import VideoLlamaProcessor
    from .video_processing_videollama import VideoLlamaVideoProcessor

    size = config.vision_config.image_size
    processor = VideoLlamaProcessor(
        video_processor=VideoLlamaVideoProcessor(size={"height": size, "width": size}),
        feature_extractor=VideoLlamaFeatureExtractor(),
        tokenizer=tokenizer,
        num_video_query_tokens=config.num_video_query_tokens,
        num_audio_query_tokens=config.num_audio_query_tokens,
        chat_template=chat_format,
    )
    processor.save_pretrained(output_dir)


def run_self_check(folder: str | os.PathLike) -> None:
    """Reload the converted folder and run one multimodal forward pass; raise if anything is off."""
    from .modeling_videollama import VideoLlamaForConditionalGeneration

    model, info = VideoLlamaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise ConversionError(f"self-check: the converted folder does not load cleanly: {bad}")
    config = model.config
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(1, 2, 3, size, size, generator=generator)
    ids = [1] + [config.video_token_index] * config.num_video_query_tokens + [100, 200]
    inputs = {"pixel_values_videos": video.to(model.dtype)}
    if config.has_audio_branch:
        audio = torch.randn(
            1, 2, 1, config.audio_config.num_mel_bins, config.audio_config.target_length, generator=generator
        )
        inputs["input_values"] = audio.to(model.dtype)
        ids += [config.audio_token_index] * config.num_audio_query_tokens
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), **inputs).logits
    if not torch.isfinite(logits).all():
        raise ConversionError("self-check: the converted model produced non-finite logits")
    logger.info("self-check passed: logits %s finite", tuple(logits.shape))


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m transformers_videollama.convert",
        description="Convert the original Video-LLaMA release files into a Hugging Face folder.",
        epilog=__doc__.split("\n\n")[-1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--eva-vit", required=True, type=Path, help="eva_vit_g.pth")
    parser.add_argument("--blip2", required=True, type=Path, help="blip2_pretrained_flant5xxl.pth")
    parser.add_argument("--imagebind", required=True, type=Path, help="imagebind_huge.pth")
    parser.add_argument("--llama", required=True, type=Path, help="HF LLaMA-2-chat / Vicuna folder")
    parser.add_argument("--vl-checkpoint", required=True, type=Path, help="vision-branch checkpoint (VL_*.pth)")
    parser.add_argument("--al-checkpoint", type=Path, help="audio-branch checkpoint (AL_*.pth); omit for video only")
    parser.add_argument("--output", required=True, type=Path, help="output folder")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--config", type=Path, help="VideoLlamaConfig JSON (default: the released architecture)")
    parser.add_argument("--chat-format", default="auto", choices=["auto", "vicuna", "llama2"])
    parser.add_argument("--with-imagebind-vision", action="store_true", help="also convert ImageBind's vision trunk")
    parser.add_argument("--max-shard-size-gb", type=float, default=5.0)
    parser.add_argument("--no-self-check", action="store_true", help="skip reloading the result")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or info logs")
    return parser


def main(argv: Iterable[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    config = None
    if args.config is not None:
        config = VideoLlamaConfig.from_json_file(str(args.config))
    try:
        convert_release(
            ReleaseFiles(args.eva_vit, args.blip2, args.imagebind, args.llama, args.vl_checkpoint, args.al_checkpoint),
            args.output,
            dtype=args.dtype,
            config=config,
            chat_format=args.chat_format,
            include_imagebind_vision=args.with_imagebind_vision,
            max_shard_size=int(args.max_shard_size_gb * 1024**3),
            self_check=not args.no_self_check,
            progress=not args.quiet,
        )
    except (ConversionError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Converted to {args.output}")
    return 0


__all__ = [
    "ConversionError",
    "ReleaseFiles",
    "check_plan",
    "convert_release",
    "expected_state_dict_shapes",
    "plan_conversion",
    "run_self_check",
]
