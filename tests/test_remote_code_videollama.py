"""Exported folders are self-contained remote code: a fresh Python process that cannot import transformers_videollama
loads them through every Auto class and the pipeline, offline, and gets the in-process model's numbers."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _fixture_a_chat import convert_fixture_a, processor_inputs
from safetensors.torch import load_file, save_file
from transformers import pipeline

from transformers_videollama import VideoLlamaConfig, VideoLlamaForConditionalGeneration, VideoLlamaProcessor
from transformers_videollama.hub_videollama import _check_flat_code, export_for_hub


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    sys.modules["transformers_videollama"] = None  # the package is not installed here
    try:
        import transformers_videollama  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("transformers_videollama is importable in the remote-code process")

    def no_network(*args, **kwargs):
        raise RuntimeError(f"network access attempted: {args}")

    socket.socket.connect = no_network  # HF_HUB_OFFLINE=1 must keep loading off the network
    socket.create_connection = no_network

    import torch
    from safetensors.torch import load_file, save_file
    from transformers import (AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForImageTextToText,
                              AutoModelForMultimodalLM, AutoProcessor, pipeline)
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor

    folder, inputs_path, out_path = sys.argv[1:4]
    inputs = load_file(inputs_path)
    classes, outputs = {}, {}
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    classes["AutoConfig"] = type(config).__module__
    with torch.no_grad():
        for auto in (AutoModelForImageTextToText, AutoModelForMultimodalLM):
            model = auto.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
            classes[auto.__name__] = type(model).__module__
            outputs[auto.__name__] = model(**inputs).logits
        base = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        classes["AutoModel"] = type(base).__module__
        outputs["AutoModel"] = base(**inputs).last_hidden_state
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    classes["AutoProcessor"] = type(processor).__module__
    classes["AutoVideoProcessor"] = type(AutoVideoProcessor.from_pretrained(folder, trust_remote_code=True)).__module__
    classes["AutoFeatureExtractor"] = type(AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)).__module__
    prompt = processor.apply_chat_template(json.loads(sys.argv[4]), add_generation_prompt=True)
    outputs["prompt_ids"] = processor(text=prompt).input_ids
    pipe = pipeline("video-text-to-text", model=folder, trust_remote_code=True, dtype=torch.float32)
    classes["pipeline"] = type(pipe).__module__
    result = pipe(text="What is happening?", videos=sys.argv[5], max_new_tokens=5, return_tensors=True,
                  generate_kwargs={"min_new_tokens": 5, "do_sample": False}, num_frames=4)
    outputs["pipeline_ids"] = result[0]["generated_token_ids"]
    save_file({k: v.contiguous() for k, v in outputs.items()}, out_path)
    print(json.dumps(classes))
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    converted = convert_fixture_a(tmp_path_factory.mktemp("fixture_a"))
    model = VideoLlamaForConditionalGeneration.from_pretrained(converted, dtype=torch.float32).eval()
    processor = VideoLlamaProcessor.from_pretrained(converted)
    folder = export_for_hub(model, processor, tmp_path_factory.mktemp("export"), progress=False)
    return model, processor, folder


def test_exported_folder_layout(exported):
    model, _, folder = exported
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "additional_chat_templates",
        "chat_template.jinja",
        "config.json",
        "configuration_imagebind.py",
        "configuration_videollama.py",
        "feature_extraction_videollama.py",
        "generation_config.json",
        "media_io_videollama.py",
        "model.safetensors",
        "modeling_imagebind.py",
        "modeling_videollama.py",
        "pipeline_videollama.py",
        "processing_videollama.py",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "video_processing_videollama.py",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_videollama.VideoLlamaConfig",
        "AutoModel": "modeling_videollama.VideoLlamaModel",
        "AutoModelForImageTextToText": "modeling_videollama.VideoLlamaForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_videollama.VideoLlamaForConditionalGeneration",
    }
    assert config["custom_pipelines"]["video-text-to-text"]["impl"] == "pipeline_videollama.VideoTextToTextPipeline"
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_videollama.VideoLlamaProcessor"
    assert "AutoVideoProcessor" in processor_config["video_processor"]["auto_map"]
    assert "AutoFeatureExtractor" in processor_config["feature_extractor"]["auto_map"]
    # the export left no trace on the classes or the model: an ordinary save writes no code and no auto_map
    assert getattr(model.config, "auto_map", None) is None and VideoLlamaConfig.__dict__.get("_auto_class") is None
    plain = folder.parent / "plain"
    model.save_pretrained(plain)
    assert not list(plain.glob("*.py")) and "auto_map" not in json.loads((plain / "config.json").read_text())


def test_flat_code_check_rejects_package_imports(tmp_path):
    (tmp_path / "modeling_x.py").write_text("from .configuration_x import C\n")
    _check_flat_code(tmp_path)
    (tmp_path / "bad.py").write_text("def f():\n    from transformers_videollama import load_preset\n")
    with pytest.raises(RuntimeError, match=r"bad\.py:2 imports transformers_videollama"):
        _check_flat_code(tmp_path)


def test_remote_code_loads_without_the_package_and_offline(exported, tmp_path):
    model, processor, folder = exported
    inputs = processor_inputs(processor, "vicuna_audio_video")
    inputs = {k: v[:1] for k, v in inputs.items()}
    save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
    chat = [{"role": "user", "content": [{"type": "text", "text": "Hello, who are you?"}]}]
    video = str(os.path.join(os.path.dirname(__file__), "fixtures", "media", "dog.jpg"))
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            REMOTE_SCRIPT,
            str(folder),
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "out.safetensors"),
            json.dumps(chat),
            video,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    classes = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(classes) == {
        "AutoConfig",
        "AutoModelForImageTextToText",
        "AutoModelForMultimodalLM",
        "AutoModel",
        "AutoProcessor",
        "AutoVideoProcessor",
        "AutoFeatureExtractor",
        "pipeline",
    }
    assert all(module.startswith("transformers_modules.") for module in classes.values()), classes

    remote = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.model(**inputs).last_hidden_state
    for name in ("AutoModelForImageTextToText", "AutoModelForMultimodalLM"):
        torch.testing.assert_close(remote[name], logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(remote["AutoModel"], hidden, rtol=0, atol=1e-6)
    assert (
        remote["prompt_ids"].tolist()
        == processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ].tolist()
    )
    local = pipeline("video-text-to-text", model=model, processor=processor)  # the in-process classes
    expected = local(
        text="What is happening?",
        videos=video,
        max_new_tokens=5,
        return_tensors=True,
        generate_kwargs={"min_new_tokens": 5, "do_sample": False},
        num_frames=4,
    )
    assert torch.equal(remote["pipeline_ids"], expected[0]["generated_token_ids"])
