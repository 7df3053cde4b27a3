"""Hub cards render and validate; the push command uploads exactly the exported files with the rendered card (the Hub
endpoint is the only fake: `HfApi.create_repo` / `create_branch` / `create_commit` are intercepted)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from _fixture_a_chat import convert_fixture_a
from huggingface_hub import HfApi, ModelCard

from transformers_videollama import VideoLlamaForConditionalGeneration, VideoLlamaProcessor
from transformers_videollama.hub_videollama import export_for_hub, load_card_metadata, main, push_to_hub, render_card


CARDS_DIR = Path(__file__).resolve().parents[1] / "hub_cards"
CARDS = sorted(CARDS_DIR.glob("*.yaml"))
MEDIA = Path(__file__).parent / "fixtures" / "media"
VARIANTS = {
    "video-llama-2-7b-finetuned",
    "video-llama-2-7b-pretrained",
    "video-llama-2-13b-finetuned",
    "video-llama-2-13b-pretrained",
    "video-llama-vicuna-7b",
    "video-llama-vicuna-13b",
    "tiny-random-video-llama",
}


def test_there_is_a_card_per_released_variant():
    assert {path.stem for path in CARDS} == VARIANTS


@pytest.mark.parametrize("path", CARDS, ids=[p.stem for p in CARDS])
def test_every_card_renders_and_validates(path):
    card = render_card(path)
    data = ModelCard(str(card)).data.to_dict()  # what the Hub parses from the front matter
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "video-text-to-text"
    assert {"video-llama", "custom_code"} <= set(data["tags"])
    meta = load_card_metadata(path)
    if meta.get("random_weights"):
        assert data["license"] == "bsd-3-clause"
    else:
        assert data["base_model"].startswith("DAMO-NLP-SG/Video-LLaMA-")
        assert data["license"] in ("llama2", "other") and "BSD-3-Clause" in card.text  # code licence stated
        assert "python -m transformers_videollama.convert" in card.text  # conversion provenance
    if data["license"] == "other":
        assert data["license_name"] and data["license_link"]
    assert ("audio" in data["tags"]) == meta["has_audio"]
    assert f'model="{meta["repo_id"]}"' in card.text and "trust_remote_code=True" in card.text
    assert "{{" not in card.text and "{%" not in card.text


def test_a_card_without_required_metadata_is_refused(tmp_path):
    data = yaml.safe_load((CARDS_DIR / "video-llama-2-7b-finetuned.yaml").read_text())
    del data["card_data"]["base_model"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    (tmp_path / "template.md").write_text((CARDS_DIR / "template.md").read_text())
    with pytest.raises(ValueError, match=r"bad\.yaml lacks the required metadata \['base_model'\]"):
        render_card(bad)
    data["card_data"]["base_model"], data["card_data"]["pipeline_tag"] = "x/y", "image-text-to-text"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="pipeline_tag 'video-text-to-text'"):
        render_card(bad)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    converted = convert_fixture_a(tmp_path_factory.mktemp("fixture_a"))
    model = VideoLlamaForConditionalGeneration.from_pretrained(converted, dtype=torch.float32)
    processor = VideoLlamaProcessor.from_pretrained(converted)
    folder = tmp_path_factory.mktemp("export")
    export_for_hub(model, processor, folder, card=CARDS_DIR / "tiny-random-video-llama.yaml", progress=False)
    return folder


EXPECTED_FILES = [
    "README.md",
    "additional_chat_templates/llama2.jinja",
    "additional_chat_templates/vicuna.jinja",
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


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--private", "--revision", "v1.0"],
        ["--create-pr", "--card", str(CARDS_DIR / "video-llama-vicuna-7b.yaml")],
    ],
    ids=["plain", "private-revision", "pr-with-card"],
)
def test_push_uploads_the_exported_files_and_card(exported, flags, capsys):
    with (
        mock.patch.object(HfApi, "create_repo") as create_repo,
        mock.patch.object(HfApi, "create_branch") as create_branch,
        mock.patch.object(HfApi, "create_commit") as create_commit,
    ):
        create_commit.return_value = mock.Mock(pr_url="https://hub/pr/1" if "--create-pr" in flags else None)
        assert main(["push", str(exported), "me/tiny-video-llama", "--quiet", *flags]) == 0
    create_repo.assert_called_once_with(
        "me/tiny-video-llama", private="--private" in flags, exist_ok=True, repo_type="model"
    )
    if "--revision" in flags:
        create_branch.assert_called_once_with("me/tiny-video-llama", branch="v1.0", exist_ok=True)
    else:
        create_branch.assert_not_called()
    kwargs = create_commit.call_args.kwargs
    assert kwargs["revision"] == ("v1.0" if "--revision" in flags else None)
    assert kwargs["create_pr"] is ("--create-pr" in flags)
    operations = {op.path_in_repo: op for op in kwargs["operations"]}
    assert sorted(operations) == EXPECTED_FILES
    readme = operations["README.md"].path_or_fileobj
    text = readme.decode() if isinstance(readme, bytes) else Path(readme).read_text()
    metadata = ModelCard(text).data.to_dict()
    if "--card" in flags:
        assert metadata["base_model"] == "DAMO-NLP-SG/Video-LLaMA-Series" and metadata["license"] == "other"
    else:  # the card written at export time
        assert metadata == {
            "language": ["en"],
            "library_name": "transformers",
            "license": "bsd-3-clause",
            "pipeline_tag": "video-text-to-text",
            "tags": [
                "video-llama",
                "video",
                "audio",
                "multimodal",
                "video-text-to-text",
                "custom_code",
                "tiny",
                "testing",
            ],
        }
    config = json.loads(Path(operations["config.json"].path_or_fileobj).read_text())
    assert "video-text-to-text" in config["custom_pipelines"] and "AutoModelForImageTextToText" in config["auto_map"]
    assert "Pushed" in capsys.readouterr().out


def test_push_refuses_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "videollama"}))
    with pytest.raises(ValueError, match="no auto_map"):
        push_to_hub(tmp_path, "me/x", api=mock.Mock(spec=HfApi))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        push_to_hub(tmp_path / "missing", "me/x", api=mock.Mock(spec=HfApi))
    assert main(["push", str(tmp_path), "no-namespace"]) == 1


def test_export_progress_bar_and_bad_arguments(exported, tmp_path, capsys):
    model = VideoLlamaForConditionalGeneration.from_pretrained(exported, dtype=torch.float32)
    processor = VideoLlamaProcessor.from_pretrained(exported)
    capsys.readouterr()
    export_for_hub(model, processor, tmp_path / "a")
    assert "Exporting" in capsys.readouterr().err
    export_for_hub(model, processor, tmp_path / "b", progress=False)
    assert "Exporting" not in capsys.readouterr().err
    with pytest.raises(TypeError, match="`model` must be a VideoLlamaForConditionalGeneration"):
        export_for_hub(processor, processor, tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="card:"):
        export_for_hub(model, processor, tmp_path / "d", card=tmp_path / "nope.yaml")
    assert not (tmp_path / "d").exists()  # a bad card fails before anything is written


def test_the_usage_snippets_of_the_tiny_card_run(exported, tmp_path):
    """Both code blocks of the card, pointed at the exported folder, run where the package is not importable."""
    card = render_card(
        CARDS_DIR / "tiny-random-video-llama.yaml",
        usage_model=str(exported),
        usage_video=str(MEDIA / "dog_barking.mp4"),
    )
    blocks = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert len(blocks) == 2
    script = 'import sys\nsys.modules["transformers_videollama"] = None\n' + "\n".join(
        block.replace("max_new_tokens=64", "max_new_tokens=3") for block in blocks
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-I", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.strip().splitlines()) >= 2  # two answers printed
