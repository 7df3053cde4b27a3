# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""Training data for Video-LLaMA as `datasets.Dataset`s: the original's formats and a simple JSONL format.

Every loader returns the same columns, so datasets of different formats can be concatenated and shuffled together
(`datasets.concatenate_datasets`), and the collator (`VideoLlamaDataCollator`) needs to know only one record shape:

    id             str            a stable id (file name, line number)
    media          str            path of the video or image ("" for text-only records)
    media_type     str            "video", "image" or ""
    audio          str            path whose audio track is used ("" for none; usually the video itself)
    conversations  list[{"from": "human"|"gpt", "value": str}]   instruction data ([] for captions)
    caption        str | None     caption data (None for instructions)

Media are **paths**, decoded lazily in the collator with PyAV: `datasets`' own `Video`/`Audio` features decode with
torchcodec, which needs a system FFmpeg.

Formats:

* `webvid`      WebVid CSV(s) with `videoid,name,page_dir` (a file or a folder of CSVs, as the original read them);
                videos at `<media_dir>/<page_dir>/<videoid>.mp4`; captions cleaned with BLIP's caption processor.
* `image_caption`  cc_sbu_align / MiniGPT-4 `{"annotations": [{"image_id", "caption"}]}` (images at
                `<media_dir>/<image_id>.jpg`), or a CC/LAION-style list `[{"image": path, "caption": str}]`.
* `llava`       LLaVA-Instruct `[{"image", "conversations": [{"from", "value"}]}]`, `<image>` marking the image.
                COCO file names: the original prepended `COCO_train2014_`; it is detected and added when needed.
* `videochat`   VideoChat-instruct `[{"video", "QA": [{"q", "a"}]}]` (`videochat_instruct_11k.json`).
* `jsonl`       ours, one JSON object per line (paths relative to the JSONL file, or to `media_dir`):

                {"video": "clips/dog.mp4", "conversations": [{"from": "human", "value": "What is the dog doing?"},
                                                              {"from": "gpt", "value": "It is barking."}]}
                {"image": "pics/cat.jpg", "conversations": [...]}
                {"video": "clips/dog.mp4", "audio": true, "conversations": [...]}      # with the video's sound
                {"video": "clips/dog.mp4", "caption": "a dog barks at the mailman"}      # stage-1 caption data

                `conversations` also accepts `{"role": "user"|"assistant", "content": str}` turns. A `<video>` or
                `<image>` tag in a user turn marks where the media go; without one they go in front of the first
                question. A gpt turn may carry `priors` for debiasing by a product of experts (training only; see
                `collator_videollama.answer_prior_biases`): `[{"offset": 18, "choices": ["moving left", ...,
                "not moving"], "weights": [1, 1, 0, 1, 1]}]`, the prior over how the answer goes on at that
                character.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets

from .collator_videollama import blip_caption, check_answer_prior
from .video_processing_videollama import IMAGE_EXTENSIONS


__all__ = [
    "DATA_FORMATS",
    "TRAINING_FEATURES",
    "load_image_captions",
    "load_jsonl",
    "load_llava_instruct",
    "load_training_data",
    "load_videochat_instruct",
    "load_webvid_captions",
]

TRAINING_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "media": datasets.Value("string"),
        "media_type": datasets.Value("string"),
        "audio": datasets.Value("string"),
        "conversations": [
            {
                "from": datasets.Value("string"),
                "value": datasets.Value("string"),
                "priors": [
                    {
                        "offset": datasets.Value("int32"),
                        "choices": [datasets.Value("string")],
                        "weights": [datasets.Value("float64")],
                    }
                ],
            }
        ],
        "caption": datasets.Value("string"),
    }
)


def _record(
    id: str,
    media: str = "",
    media_type: str = "",
    audio: str = "",
    conversations: list[dict[str, str]] | None = None,
    caption: str | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "media": media,
        "media_type": media_type,
        "audio": audio,
        "conversations": [{**turn, "priors": turn.get("priors") or []} for turn in conversations or []],
        "caption": caption,
    }


def _to_dataset(records: list[dict[str, Any]], source: Path) -> datasets.Dataset:
    if not records:
        raise ValueError(f"{source}: no training records found")
    return datasets.Dataset.from_list(records, features=TRAINING_FEATURES)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def _require(entry: Any, keys: Iterable[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing} (has {sorted(entry)})")


def _conversation(turns: Any, where: str) -> list[dict[str, str]]:
    """Normalise turns to `{"from": "human"|"gpt", "value"}` and check they alternate, starting with the user."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: 'conversations' must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: turn {i} is not an object")
        role = str(turn.get("from", turn.get("role", ""))).lower()
        value = turn.get("value", turn.get("content"))
        role = {"user": "human", "assistant": "gpt"}.get(role, role)
        if role not in ("human", "gpt"):
            raise ValueError(f"{where}: turn {i} has role {role!r}; use human/gpt (or user/assistant)")
        if not isinstance(value, str):
            raise ValueError(f"{where}: turn {i} needs a string 'value' (or 'content')")
        if role != ("human", "gpt")[i % 2]:
            raise ValueError(f"{where}: turns must alternate human/gpt starting with human; turn {i} is {role!r}")
        out.append(
            {"from": role, "value": value, "priors": _priors(turn.get("priors"), role, value, f"{where}: turn {i}")}
        )
    return out


def _priors(priors: Any, role: str, answer: str, where: str) -> list[dict[str, Any]]:
    """Check a turn's `priors` (see the module docstring) so that a bad one is reported with its line."""
    if not priors:
        return []
    if role != "gpt":
        raise ValueError(f"{where}: 'priors' belong to gpt (assistant) turns")
    if not isinstance(priors, list):
        raise ValueError(f"{where}: 'priors' must be a list of {{'offset', 'choices', 'weights'}} objects")
    out = []
    for k, prior in enumerate(priors):
        if isinstance(prior, dict) and set(prior) - {"offset", "choices", "weights"}:
            raise ValueError(
                f"{where}: prior {k} has unknown fields {sorted(set(prior) - {'offset', 'choices', 'weights'})}"
            )
        offset, choices, weight, _ = check_answer_prior(prior, answer, f"{where}: prior {k}")
        out.append({"offset": offset, "choices": choices, "weights": [weight[c] for c in choices]})
    return out


def _media_type(path: str) -> str:
    return "image" if Path(path).suffix.lower() in IMAGE_EXTENSIONS else "video"


def load_webvid_captions(
    annotations: str | os.PathLike, media_dir: str | os.PathLike, clean_captions: bool = True
) -> datasets.Dataset:
    """WebVid caption CSV(s) (`videoid`, `name`, `page_dir`): stage-1 video-caption data.

    Args:
        annotations: one CSV file, or a folder whose `*.csv` files are all read (as the original did).
        media_dir: root of the videos, laid out as `<page_dir>/<videoid>.mp4`.
        clean_captions: apply BLIP's caption processor (lowercase, punctuation removed, 50 words), as the original.
    """
    annotations, media_dir = Path(annotations), Path(media_dir)
    files = sorted(annotations.glob("*.csv")) if annotations.is_dir() else [annotations]
    if not files or not files[0].is_file():
        raise FileNotFoundError(f"no WebVid CSV at {str(annotations)!r}")
    records = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"videoid", "name", "page_dir"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{path}: WebVid CSV lacks column(s) {sorted(missing)} (has {reader.fieldnames})")
            for row in reader:
                caption = row["name"].strip()
                records.append(
                    _record(
                        id=str(row["videoid"]),
                        media=str(media_dir / row["page_dir"] / f"{row['videoid']}.mp4"),
                        media_type="video",
                        caption=blip_caption(caption) if clean_captions else caption,
                    )
                )
    return _to_dataset(records, annotations)


def load_image_captions(
    annotations: str | os.PathLike, media_dir: str | os.PathLike, clean_captions: bool = False
) -> datasets.Dataset:
    """Image-caption JSON: cc_sbu_align / MiniGPT-4 (`{"annotations": [{"image_id", "caption"}]}`, images at
    `<media_dir>/<image_id>.jpg`) or a CC/LAION-style list `[{"image": relative path, "caption"}]`.

    The original used cc_sbu_align captions as they are (`clean_captions=False`).
    """
    path, media_dir = Path(annotations), Path(media_dir)
    data = _read_json(path)
    entries = data["annotations"] if isinstance(data, dict) and "annotations" in data else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of entries or {{'annotations': [...]}}")
    records = []
    for i, entry in enumerate(entries):
        where = f"{path} entry {i}"
        if isinstance(entry, dict) and "image_id" in entry:
            _require(entry, ("image_id", "caption"), where)
            image = media_dir / f"{entry['image_id']}.jpg"
        else:
            _require(entry, ("image", "caption"), where)
            image = media_dir / entry["image"]
        caption = str(entry["caption"])
        records.append(
            _record(
                id=str(entry.get("image_id", entry.get("image"))),
                media=str(image),
                media_type="image",
                caption=blip_caption(caption) if clean_captions else caption,
            )
        )
    return _to_dataset(records, path)


def load_llava_instruct(
    annotations: str | os.PathLike, media_dir: str | os.PathLike, image_prefix: str | None = None
) -> datasets.Dataset:
    """LLaVA-Instruct JSON (`[{"image", "conversations": [{"from", "value"}]}]`): stage-2 image instructions.

    Args:
        image_prefix: prepended to every `image` name. The original hard-coded `"COCO_train2014_"` (the COCO file
            names); `None` detects it from the first entry whose file exists with or without the prefix.
    """
    path, media_dir = Path(annotations), Path(media_dir)
    entries = _read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of LLaVA entries")
    if image_prefix is None:
        image_prefix = ""
        for entry in entries[:1]:
            name = entry.get("image", "") if isinstance(entry, dict) else ""
            if not (media_dir / name).is_file() and (media_dir / f"COCO_train2014_{name}").is_file():
                image_prefix = "COCO_train2014_"
    records = []
    for i, entry in enumerate(entries):
        where = f"{path} entry {i}"
        _require(entry, ("conversations",), where)
        image = str(media_dir / f"{image_prefix}{entry['image']}") if entry.get("image") else ""
        records.append(
            _record(
                id=str(entry.get("id", i)),
                media=image,
                media_type="image" if image else "",
                conversations=_conversation(entry["conversations"], where),
            )
        )
    return _to_dataset(records, path)


def load_videochat_instruct(annotations: str | os.PathLike, media_dir: str | os.PathLike) -> datasets.Dataset:
    """VideoChat-instruct JSON (`[{"video", "QA": [{"q", "a"}]}]`): stage-2 video instructions."""
    path, media_dir = Path(annotations), Path(media_dir)
    entries = _read_json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of VideoChat entries")
    records = []
    for i, entry in enumerate(entries):
        where = f"{path} entry {i}"
        _require(entry, ("video", "QA"), where)
        qa = entry["QA"]
        if not isinstance(qa, list) or not qa or not all(isinstance(t, dict) and {"q", "a"} <= set(t) for t in qa):
            raise ValueError(f"{where}: 'QA' must be a non-empty list of {{'q', 'a'}} objects")
        turns = [turn for t in qa for turn in ({"from": "human", "value": t["q"]}, {"from": "gpt", "value": t["a"]})]
        records.append(
            _record(
                id=str(entry["video"]),
                media=str(media_dir / entry["video"]),
                media_type="video",
                conversations=_conversation(turns, where),
            )
        )
    return _to_dataset(records, path)


def load_jsonl(path: str | os.PathLike, media_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """Our JSONL format (see the module docstring): one instruction or caption record per line.

    Relative media paths are resolved against `media_dir`, or else the JSONL file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {str(path)!r} does not exist")
    root = Path(media_dir) if media_dir is not None else path.parent
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error})") from error
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected a JSON object")
            if "video" in entry and "image" in entry:
                raise ValueError(f"{where}: give either 'video' or 'image', not both")
            media_key = "video" if "video" in entry else "image" if "image" in entry else None
            media = str(root / entry[media_key]) if media_key else ""
            audio = entry.get("audio", False)
            if audio is True:
                if media_key != "video":
                    raise ValueError(f"{where}: 'audio': true means the video's own sound, but there is no 'video'")
                audio = media
            elif audio:
                audio = str(root / audio)
            else:
                audio = ""
            has_conv, has_caption = "conversations" in entry, "caption" in entry
            if has_conv == has_caption:
                raise ValueError(f"{where}: a record needs exactly one of 'conversations' or 'caption'")
            if has_caption and not media:
                raise ValueError(f"{where}: a caption record needs a 'video' or 'image'")
            records.append(
                _record(
                    id=str(entry.get("id", number)),
                    media=media,
                    media_type=(media_key if media_key == "video" else "image") if media else "",
                    audio=audio,
                    conversations=_conversation(entry["conversations"], where) if has_conv else None,
                    caption=str(entry["caption"]) if has_caption else None,
                )
            )
    return _to_dataset(records, path)


DATA_FORMATS = {
    "webvid": load_webvid_captions,
    "image_caption": load_image_captions,
    "llava": load_llava_instruct,
    "videochat": load_videochat_instruct,
    "jsonl": load_jsonl,
}


def load_training_data(
    data_format: str, annotations: str | os.PathLike, media_dir: str | os.PathLike | None = None
) -> datasets.Dataset:
    """Load one annotation file of any supported format (`DATA_FORMATS`) into the common record columns."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"Unknown data format {data_format!r}; choose one of {sorted(DATA_FORMATS)}")
    if data_format == "jsonl":
        return load_jsonl(annotations, media_dir)
    if media_dir is None:
        raise ValueError(f"The {data_format!r} format needs media_dir (the folder of its videos/images)")
    return DATA_FORMATS[data_format](annotations, media_dir)
