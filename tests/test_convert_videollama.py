"""The release converter: full-size mapping on manifests (no weights), refusals, the command line, sharding."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from _reference import REFERENCE_DIR, reference_config, release_files
from safetensors import safe_open
from transformers import AutoProcessor

from transformers_videollama import (
    ConversionError,
    ImageBindVisionConfig,
    VideoLlamaForConditionalGeneration,
    convert_release,
    load_preset,
)
from transformers_videollama.convert_videollama_weights_to_hf import (
    check_plan,
    expected_state_dict_shapes,
    plan_conversion,
)


def _manifest_sources(size: str) -> dict[str, dict[str, tuple[int, ...]]]:
    manifest = json.loads((REFERENCE_DIR / f"manifest_{size}.json").read_text())
    labels = {
        "eva_vit_g": "eva_vit",
        "blip2": "blip2",
        "imagebind": "imagebind",
        "VL_": "vl_checkpoint",
        "AL_": "al_checkpoint",
        "llama": "llama",
    }
    sources = {}
    for filename, entry in manifest["files"].items():
        label = next(v for k, v in labels.items() if filename.startswith(k))
        sources[label] = {key: tuple(spec["shape"]) for key, spec in entry["keys"].items()}
    return sources


@pytest.mark.parametrize("size,preset", [("7b", "video-llama-2-7b"), ("13b", "video-llama-2-13b")])
def test_full_size_release_maps_onto_preset(size, preset):
    """Every tensor of the real release files (names + shapes from the manifests) lands on the full-size model."""
    sources = _manifest_sources(size)
    plan = plan_conversion(sources)
    check_plan(plan, expected_state_dict_shapes(load_preset(preset)))  # raises on missing/unexpected/shape
    total = sum(len(keys) for keys in sources.values())
    consumed = {src for t in plan.targets.values() for src in t.sources}
    assert len(consumed) + len(plan.skipped) == total  # every tensor consumed or skipped by a named rule
    reasons = set(plan.skipped.values())
    assert "SKIP: ImageBind modality Video-LLaMA does not use" in reasons
    assert "SKIP: buffer (rotary frequencies, recomputed)" in reasons
    assert all(r.startswith(("SKIP: ", "CONFIG: ")) for r in reasons)


def test_full_size_release_with_imagebind_vision_trunk():
    plan = plan_conversion(_manifest_sources("7b"), include_imagebind_vision=True)
    config = load_preset("video-llama-2-7b", imagebind_vision_config=ImageBindVisionConfig())
    check_plan(plan, expected_state_dict_shapes(config))


def _write_modified(tmp_path, name, edit):
    """Copy one release file with `edit(state_dict)` applied; return ReleaseFiles pointing at it."""
    files = release_files()
    label = {"VL_checkpoint.pth": "vl_checkpoint", "blip2_pretrained_flant5xxl.pth": "blip2"}.get(
        name, "imagebind" if name == "imagebind_huge.pth" else "al_checkpoint"
    )
    data = torch.load(REFERENCE_DIR / name, map_location="cpu", weights_only=True)
    edit(data.get("model", data))
    torch.save(data, tmp_path / name)
    setattr(files, label, tmp_path / name)
    return files


def _convert(files, tmp_path, **kwargs):
    return convert_release(
        files,
        tmp_path / "out",
        dtype="float32",
        config=reference_config(),
        save_processor=False,
        progress=False,
        self_check=False,
        **kwargs,
    )


def test_refuses_a_missing_tensor(tmp_path):
    files = _write_modified(tmp_path, "VL_checkpoint.pth", lambda sd: sd.pop("llama_proj.bias"))
    with pytest.raises(ConversionError, match=r"(?s)missing \(1\).*model\.video_projection\.bias"):
        _convert(files, tmp_path)


def test_refuses_an_unknown_tensor(tmp_path):
    files = _write_modified(tmp_path, "AL_checkpoint.pth", lambda sd: sd.update(audio_gate=torch.zeros(3)))
    with pytest.raises(ConversionError, match=r"(?s)match no conversion rule.*al_checkpoint: audio_gate \[3\]"):
        _convert(files, tmp_path)


def test_refuses_a_wrong_shape(tmp_path):
    def widen(sd):
        sd["query_tokens"] = torch.zeros(1, 9, 32)

    files = _write_modified(tmp_path, "blip2_pretrained_flant5xxl.pth", widen)
    with pytest.raises(
        ConversionError, match=r"(?s)wrong shape \(1\).*model\.qformer\.query_tokens: release gives \[1, 9, 32\]"
    ):
        _convert(files, tmp_path)


class NotATensor:  # a pickled class: weights_only loading must refuse to execute it
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_never_executes_pickled_code(tmp_path):
    files = release_files()
    torch.save({"model": {"x": NotATensor()}}, tmp_path / "evil.pth")
    files.vl_checkpoint = tmp_path / "evil.pth"
    with pytest.raises(ConversionError, match=r"evil\.pth: cannot be read safely with weights_only=True"):
        _convert(files, tmp_path)


def test_missing_file_is_named(tmp_path):
    files = release_files()
    files.eva_vit = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"--eva-vit: .*nope\.pth is not a file"):
        _convert(files, tmp_path)


def test_vision_only_conversion(tmp_path):
    out = convert_release(
        release_files(with_audio=False),
        tmp_path / "vl",
        dtype="float32",
        config=reference_config(has_audio_branch=False),
        progress=False,
    )
    model = VideoLlamaForConditionalGeneration.from_pretrained(out)
    assert not model.config.has_audio_branch and not hasattr(model.model, "audio_tower")
    processor = AutoProcessor.from_pretrained(out)
    assert processor.num_audio_query_tokens == 0
    with pytest.raises(ValueError, match="without an audio branch"):
        processor(text="<AudioHere> hi", audio=[np.zeros(32000, dtype=np.float32)], sampling_rate=16000)


def test_command_line_sharded_bfloat16(tmp_path):
    """The documented command, with a tiny shard size to exercise sharding, then a self-check run."""
    config_path = tmp_path / "config.json"
    reference_config().to_json_file(config_path)
    r = REFERENCE_DIR
    out = tmp_path / "converted"
    cmd = [
        sys.executable, "-m", "transformers_videollama.convert",
        "--eva-vit", r / "eva_vit_g.pth", "--blip2", r / "blip2_pretrained_flant5xxl.pth",
        "--imagebind", r / "imagebind_huge.pth", "--llama", r / "llama",
        "--vl-checkpoint", r / "VL_checkpoint.pth", "--al-checkpoint", r / "AL_checkpoint.pth",
        "--output", out, "--dtype", "bfloat16", "--config", config_path,
        "--max-shard-size-gb", "0.0004", "--chat-format", "vicuna", "--quiet",
    ]  # fmt: skip
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    with safe_open(out / shards[0], framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118
    generation_config = json.loads((out / "generation_config.json").read_text())
    assert generation_config["eos_token_id"][0] == 2  # plus the single-token spellings of "###", if any
    model = VideoLlamaForConditionalGeneration.from_pretrained(out)
    assert model.dtype == torch.bfloat16


def test_command_line_error_has_no_traceback(tmp_path):
    cmd = [
        sys.executable, "-m", "transformers_videollama.convert", "--eva-vit", tmp_path / "missing.pth",
        "--blip2", "b", "--imagebind", "i", "--llama", REFERENCE_DIR / "llama", "--vl-checkpoint", "v",
        "--output", tmp_path / "o",
    ]  # fmt: skip
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "missing.pth is not a file" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_tokenizer_fails_before_writing_weights(tmp_path):
    import shutil

    llama = tmp_path / "llama"
    shutil.copytree(REFERENCE_DIR / "llama", llama)
    (llama / "tokenizer.model").unlink()
    files = release_files()
    files.llama = llama
    with pytest.raises(FileNotFoundError, match=r"--llama: .* has no tokenizer\.model"):
        convert_release(files, tmp_path / "out", dtype="float32", config=reference_config(), progress=False)
    assert not (tmp_path / "out").exists()
