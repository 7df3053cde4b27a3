# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""Hub-ready folders for Video-LLaMA: export (self-contained remote code), model cards, and push.

`export_for_hub(model, processor, folder)` writes a folder that loads where this package is *not* installed:

    config.json               auto_map (AutoConfig / AutoModel / AutoModelForImageTextToText / AutoModelForMultimodalLM)
                              and custom_pipelines ("video-text-to-text")
    generation_config.json    with the checkpoint's stop rule
    model*.safetensors        weights (sharded with an index for large models)
    processor_config.json     processor kwargs + nested video processor / feature extractor, each with its auto_map
    tokenizer.json, tokenizer_config.json, chat_template.jinja, additional_chat_templates/
    configuration_*.py, modeling_*.py, processing_*.py, video_processing_*.py, feature_extraction_*.py,
    media_io_*.py, pipeline_videollama.py      the package's modules, copied flat by transformers' own
                              `custom_object_save` (which follows `from .x import Y` imports)
    README.md                 (with `card=`) the rendered model card

`push_to_hub(folder, repo_id, ...)` uploads such a folder with `huggingface_hub` (`--private`, `--revision`,
`--create-pr`). Cards are rendered from `hub_cards/template.md` + one `hub_cards/<variant>.yaml` per checkpoint
with `huggingface_hub.ModelCard`, and validated before anything is written or uploaded.

Command line: `python -m transformers_videollama.hub_videollama export|push|render ...` (`--help`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils import logging as hf_logging


logger = logging.getLogger("transformers_videollama.hub")

__all__ = ["REQUIRED_CARD_FIELDS", "export_for_hub", "load_card_metadata", "main", "push_to_hub", "render_card"]

TASK = "video-text-to-text"
REQUIRED_CARD_FIELDS = ("library_name", "pipeline_tag", "license", "base_model", "tags")
# Auto classes that load the model class, beyond the one `register_for_auto_class` records.
_MODEL_AUTO_CLASSES = ("AutoModelForImageTextToText", "AutoModelForMultimodalLM")
_PACKAGE = "transformers_videollama"


# ----------------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _auto_classes(objects: dict[str, Any]) -> Iterator[None]:
    """Set `_auto_class` on the given objects' classes for one save, then restore them.

    `register_for_auto_class` is what makes `save_pretrained` copy the code and write `auto_map`, but it sets a class
    attribute for the whole process; scoping it keeps every later, ordinary `save_pretrained` free of code files.
    """
    saved = {type(obj): type(obj).__dict__.get("_auto_class", None) for obj in objects.values()}
    try:
        for auto_class, obj in objects.items():
            type(obj)._auto_class = auto_class
        yield
    finally:
        for cls, value in saved.items():
            if value is None:
                with contextlib.suppress(AttributeError):
                    delattr(cls, "_auto_class")
            else:
                cls._auto_class = value


def _module_files(module_name: str) -> list[Path]:
    """A module's file and, recursively, the sibling modules it imports as `from .x import Y`."""
    path = Path(sys.modules[module_name].__file__)
    return [path, *(Path(p) for p in get_relative_import_files(path))]


def _check_flat_code(folder: Path) -> None:
    """Fail if a copied module still needs the installed package (it would not load from the Hub)."""
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level > 1:
                names = ["." * node.level + (node.module or "")]
            bad = [name for name in names if name.split(".")[0] == _PACKAGE or name.startswith("..")]
            if bad:
                raise RuntimeError(
                    f"{path.name}:{node.lineno} imports {bad[0]}; remote code may only import its flat siblings "
                    "(`from .module import Name`)"
                )


def export_for_hub(
    model: Any,
    processor: Any,
    output_dir: str | os.PathLike,
    card: str | os.PathLike | None = None,
    max_shard_size: str | int = "5GB",
    progress: bool = True,
) -> Path:
    """Save `model` + `processor` as a self-contained folder that loads with `trust_remote_code=True`.

    Args:
        model: a `VideoLlamaForConditionalGeneration`.
        processor: its `VideoLlamaProcessor`.
        output_dir: the folder to write (created; existing files with the same names are overwritten).
        card: a `hub_cards/<variant>.yaml` to render into `README.md` (validated first).
        max_shard_size: passed to `save_pretrained`.
        progress: show a progress bar over the export steps (also silenced by
            `transformers.utils.logging.disable_progress_bar()`).

    Returns:
        The folder. Loading it: `AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)`,
        `AutoProcessor.from_pretrained(folder, trust_remote_code=True)`, or
        `pipeline("video-text-to-text", model=folder, trust_remote_code=True)`.
    """
    from .pipeline_videollama import VideoTextToTextPipeline

    if not hasattr(model, "get_video_features") or not hasattr(model, "generate"):
        raise TypeError(f"`model` must be a VideoLlamaForConditionalGeneration, got {type(model).__name__}")
    if getattr(processor, "video_processor", None) is None or getattr(processor, "feature_extractor", None) is None:
        raise TypeError(f"`processor` must be a VideoLlamaProcessor, got {type(processor).__name__}")
    rendered = render_card(card) if card is not None else None  # fail on a bad card before writing anything
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    steps = ["weights and config", "processor", "pipeline code", "model card"]
    bar = hf_logging.tqdm(total=len(steps), desc="Exporting", unit="step", disable=not progress)
    config = model.config
    saved = {name: vars(config)[name] for name in ("auto_map", "custom_pipelines") if name in vars(config)}
    model_class = type(model).__name__
    base_class = type(model.model).__name__
    try:
        # 1. weights + config (+ configuration/modeling code via custom_object_save)
        config.auto_map = {
            "AutoConfig": f"configuration_videollama.{type(config).__name__}",
            "AutoModel": f"modeling_videollama.{base_class}",
            **dict.fromkeys(_MODEL_AUTO_CLASSES, f"modeling_videollama.{model_class}"),
        }
        config.custom_pipelines = {
            TASK: {
                "impl": f"pipeline_videollama.{VideoTextToTextPipeline.__name__}",
                "pt": list(_MODEL_AUTO_CLASSES[:1]),
                "type": "multimodal",
            }
        }
        with _auto_classes({"AutoConfig": config, "AutoModelForImageTextToText": model}):
            model.save_pretrained(output_dir, max_shard_size=max_shard_size)
        bar.update(1)
        # 2. processor (tokenizer, chat templates, nested video processor / feature extractor, + their code)
        with _auto_classes(
            {
                "AutoProcessor": processor,
                "AutoVideoProcessor": processor.video_processor,
                "AutoFeatureExtractor": processor.feature_extractor,
            }
        ):
            processor.save_pretrained(output_dir)
        bar.update(1)
    finally:  # leave the in-memory config as it was (an ordinary save must not gain auto_map: null)
        for name in ("auto_map", "custom_pipelines"):
            if name in saved:
                setattr(config, name, saved[name])
            elif name in vars(config):
                delattr(config, name)
    # 3. the pipeline module (and what it imports), flat beside the others
    for path in _module_files(VideoTextToTextPipeline.__module__):
        shutil.copyfile(path, output_dir / path.name)
    _check_flat_code(output_dir)
    bar.update(1)
    # 4. model card
    if rendered is not None:
        rendered.save(output_dir / "README.md")
    bar.update(1)
    bar.close()
    logger.info("Exported %s to %s", model_class, output_dir)
    return output_dir


# ----------------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------------
def load_card_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate one `hub_cards/<variant>.yaml`: `card_data` (the YAML front matter) + template variables."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"card: {path} is not a file")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("card_data"), dict):
        raise ValueError(f"card: {path.name} must be a mapping with a 'card_data' mapping (the card's metadata)")
    card_data = data["card_data"]
    # random-weight test models descend from no checkpoint; every released variant must name its base model
    required = [name for name in REQUIRED_CARD_FIELDS if not (name == "base_model" and data.get("random_weights"))]
    missing = [name for name in required if not card_data.get(name)]
    if missing:
        raise ValueError(f"card: {path.name} lacks the required metadata {missing}")
    if card_data["library_name"] != "transformers" or card_data["pipeline_tag"] != TASK:
        raise ValueError(
            f"card: {path.name} must have library_name 'transformers' and pipeline_tag {TASK!r}, got "
            f"{card_data['library_name']!r} / {card_data['pipeline_tag']!r}"
        )
    if card_data["license"] == "other" and not card_data.get("license_name"):
        raise ValueError(f"card: {path.name} uses license 'other' and must name it (license_name, license_link)")
    for key in ("repo_id", "title", "usage_model", "provenance", "license_note"):
        if not data.get(key):
            raise ValueError(f"card: {path.name} lacks the template variable {key!r}")
    return data


def render_card(path: str | os.PathLike, template: str | os.PathLike | None = None, **variables: Any) -> ModelCard:
    """Render a variant's card (`hub_cards/<variant>.yaml` into `hub_cards/template.md`) and validate it.

    The YAML front matter comes from `card_data` through `ModelCardData`, so it is what the Hub parses; every other
    top-level key is a template variable (`variables` override them, e.g. `usage_model=` a local folder to try the
    usage snippet). Raises `ValueError` naming the file and the problem.
    """
    path = Path(path)
    data = {**load_card_metadata(path), **variables}
    template = Path(template) if template is not None else path.parent / "template.md"
    if not template.is_file():
        raise FileNotFoundError(f"card template: {template} is not a file")
    variables = {k: v for k, v in data.items() if k != "card_data"}
    card = ModelCard.from_template(ModelCardData(**data["card_data"]), template_path=str(template), **variables)
    parsed = ModelCard(str(card))  # round trip: the text must parse back to the same metadata
    for key in REQUIRED_CARD_FIELDS:
        if parsed.data.to_dict().get(key) != data["card_data"].get(key):
            raise ValueError(f"card: {path.name}: {key!r} does not survive rendering")
    unresolved = [token for token in ("{{", "}}", "{%") if token in card.text]
    if unresolved:
        raise ValueError(f"card: {path.name} leaves unresolved template syntax {unresolved}")
    return card


# ----------------------------------------------------------------------------------------------------------------------
# Push
# ----------------------------------------------------------------------------------------------------------------------
def _folder_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    card: str | os.PathLike | None = None,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    progress: bool = True,
    api: HfApi | None = None,
) -> Any:
    """Upload an exported folder (plus its rendered card) to `repo_id` in one commit.

    Args:
        folder: a folder written by `export_for_hub` (must hold `config.json` with `auto_map`).
        repo_id: `namespace/name` on the Hub.
        card: a `hub_cards/<variant>.yaml`; rendered into `README.md` of the commit (replacing the folder's).
        private: create the repository as private (when it does not exist yet).
        revision: the branch to commit to (created from the default branch if missing).
        create_pr: open a pull request instead of committing to the branch.
        commit_message: defaults to "Upload Video-LLaMA (transformers remote code)".
        token: a Hub token (defaults to the logged-in one).
        progress: show upload progress bars (`huggingface_hub`'s); `False` silences them.
        api: an `HfApi` to use (tests pass one whose network methods are intercepted).

    Returns:
        The `CommitInfo` of the commit (or pull request).
    """
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"folder: {folder} has no config.json; export it with export_for_hub first")
    config = json.loads(config_path.read_text())
    if "auto_map" not in config or TASK not in config.get("custom_pipelines", {}):
        raise ValueError(f"folder: {folder}/config.json has no auto_map / custom_pipelines; use export_for_hub")
    if "/" not in repo_id:
        raise ValueError(f"repo_id must be 'namespace/name', got {repo_id!r}")
    files = {name: folder / name for name in _folder_files(folder)}
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
        for name, path in files.items()
        if not (card is not None and name == "README.md")
    ]
    if card is not None:
        operations.append(
            CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(render_card(card)).encode())
        )
    operations.sort(key=lambda op: op.path_in_repo)

    api = api or HfApi(token=token)
    if not progress:
        disable_progress_bars()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or "Upload Video-LLaMA (transformers remote code)",
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )
    finally:
        if not progress:
            enable_progress_bars()


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m transformers_videollama.hub_videollama",
        description="Export a converted Video-LLaMA folder as Hub-ready remote code, render its card, push it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="converted folder -> self-contained remote-code folder")
    export.add_argument("source", type=Path, help="a folder written by the converter (or any saved Video-LLaMA)")
    export.add_argument("output", type=Path, help="where to write the export")
    export.add_argument("--card", type=Path, help="hub_cards/<variant>.yaml to render into README.md")
    export.add_argument("--max-shard-size", default="5GB")
    push = sub.add_parser("push", help="upload an exported folder")
    push.add_argument("folder", type=Path)
    push.add_argument("repo_id")
    push.add_argument("--card", type=Path, help="hub_cards/<variant>.yaml (replaces the folder's README.md)")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", help="branch to commit to")
    push.add_argument("--create-pr", action="store_true")
    push.add_argument("--commit-message")
    render = sub.add_parser("render", help="render (and validate) cards; print the first one")
    render.add_argument("cards", type=Path, nargs="+")
    for command in (export, push, render):
        command.add_argument("--quiet", action="store_true", help="no progress bars or info logs")
    return parser


def main(argv: Iterable[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    bars_were_on = hf_logging.is_progress_bar_enabled()
    if args.quiet:
        hf_logging.disable_progress_bar()
    try:
        if args.command == "export":
            from transformers import AutoModelForImageTextToText, AutoProcessor  # the package registered them

            if not (args.source / "config.json").is_file():
                raise FileNotFoundError(f"{str(args.source)!r} is not a saved Video-LLaMA folder (no config.json)")

            model = AutoModelForImageTextToText.from_pretrained(args.source)
            processor = AutoProcessor.from_pretrained(args.source)
            export_for_hub(
                model,
                processor,
                args.output,
                card=args.card,
                max_shard_size=args.max_shard_size,
                progress=not args.quiet,
            )
            print(f"Exported to {args.output}")
        elif args.command == "push":
            info = push_to_hub(
                args.folder,
                args.repo_id,
                card=args.card,
                private=args.private,
                revision=args.revision,
                create_pr=args.create_pr,
                commit_message=args.commit_message,
                progress=not args.quiet,
            )
            print(f"Pushed: {getattr(info, 'pr_url', None) or getattr(info, 'commit_url', info)}")
        else:
            cards = [render_card(path) for path in args.cards]
            print(cards[0])
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if bars_were_on:  # `main` may run in-process (tests, notebooks): do not leave the bars off
            hf_logging.enable_progress_bar()
    return 0


if __name__ == "__main__":
    sys.exit(main())
