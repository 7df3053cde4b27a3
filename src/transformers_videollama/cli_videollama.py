# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""The `videollama` command line: chat with a video, caption many videos, evaluate, convert and export checkpoints.

    videollama chat clip.mp4 "What is happening?"        # one answer (with the clip's sound track), then exit
    videollama chat clip.mp4                             # interactive multi-turn chat (`exit`, EOF or Ctrl-C ends it)
    videollama describe videos/ more/*.mp4 --output captions.jsonl   # batched and resumable
    accelerate launch --num_processes 2 -m transformers_videollama.cli_videollama describe videos/ -o captions.jsonl
    videollama eval --split heldout --num-videos 50 --output report.json
    videollama convert ... | videollama export ... | videollama push ...

Without `--model` the bundled small model (`DEFAULT_MODEL`, trained on the synthetic world of `world_videollama`) is
used. Exit codes: 0 success, 1 runtime failure (bad model folder, unreadable video, ...), 2 usage error. Errors are
one `error: ...` line on stderr; `--verbose` shows tracebacks and info logs.

The evaluation is also a library function, `evaluate_model(model, processor, records)`, and the batched generation
behind `describe` and `eval` is `generate_answers(model, processor, items)`.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as hf_logging

from .pipeline_videollama import answer_from_ids, stop_token_ids
from .video_processing_videollama import IMAGE_EXTENSIONS


__all__ = [
    "DEFAULT_MODEL",
    "AnswerStreamer",
    "CliError",
    "WorkItem",
    "build_parser",
    "collect_media",
    "evaluate_model",
    "generate_answers",
    "load_eval_records",
    "load_model",
    "main",
    "score_predictions",
]

DEFAULT_MODEL = Path(__file__).resolve().parent / "bundled" / "videollama-world-small"
VIDEO_EXTENSIONS = {
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts", ".ogv",
}  # fmt: skip
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXIT_WORDS = {"exit", "quit", ":q", "/exit", "/quit"}
DEFAULT_QUESTION = "Describe the video."

logger = logging.getLogger("transformers_videollama.cli_videollama")  # also when run as `python -m`


class CliError(Exception):
    """A failure the user can fix (bad path, missing model, unreadable media): reported as one line, exit code 1."""


# ----------------------------------------------------------------------------------------------------------------
# Model loading
# ----------------------------------------------------------------------------------------------------------------


def _looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a local path rather than a Hub id (`owner/name` or `name`)."""
    if name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or (os.sep != "/" and os.sep in name):
        return True
    return name.count("/") > 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | None, device: str | torch.device) -> torch.dtype:
    if dtype is not None:
        return DTYPES[dtype]
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(
    model: str | os.PathLike | None = None, device: str | torch.device | None = None, dtype: str | None = None
) -> tuple[Any, Any]:
    """Load a Video-LLaMA model and processor (local folder or Hub id; default: the bundled model), in eval mode.

    Local folders are read with `local_files_only=True`, so they never touch the network. Failures raise `CliError`.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import transformers_videollama  # noqa: F401  (registers the Auto classes)

    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    if model is None:
        if not DEFAULT_MODEL.is_dir():
            raise CliError(
                f"the bundled model is not installed (expected the folder {str(DEFAULT_MODEL)!r}); pass --model with "
                "a converted Video-LLaMA folder or a Hub id."
            )
        name, local = str(DEFAULT_MODEL), True
    else:
        name = os.path.expanduser(os.fspath(model))
        local = os.path.exists(name)
        if local and not os.path.isdir(name):
            raise CliError(f"--model {name!r} is a file; pass a model folder (with config.json) or a Hub id.")
        if not local and _looks_like_path(name):
            raise CliError(f"the model folder {name!r} does not exist.")
    if local and not os.path.isfile(os.path.join(name, "config.json")):
        raise CliError(f"{name!r} is not a model folder: it has no config.json.")
    where = f"the folder {name!r}" if local else f"the Hub repository {name!r}"
    try:
        loaded = AutoModelForImageTextToText.from_pretrained(name, dtype=torch_dtype, local_files_only=local)
        processor = AutoProcessor.from_pretrained(name, local_files_only=local)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CliError(f"could not load a Video-LLaMA model from {where}: {_one_line(error)}") from error
    if not hasattr(loaded, "get_video_features") or not hasattr(processor, "video_processor"):
        raise CliError(f"{where} does not hold a Video-LLaMA model (got {type(loaded).__name__}).")
    try:
        loaded = loaded.to(device)
    except (RuntimeError, AssertionError) as error:
        raise CliError(f"cannot move the model to device {str(device)!r}: {_one_line(error)}") from error
    return loaded.eval(), processor


def generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`generate()` options from the command line: greedy unless `--sample`."""
    kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens}
    if args.sample:
        kwargs.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    else:
        kwargs.update(do_sample=False, num_beams=1)
    return kwargs


# ----------------------------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------------------------


class AnswerStreamer(BaseStreamer):
    """Print an answer while it is generated, exactly as `answer_from_ids` will cut it (batch size 1).

    The text is cut at the first end-of-sequence id and at the text of non-special stop tokens (Vicuna's `###`); the
    tail that could still turn into a stop string, trailing whitespace and incomplete characters are held back until
    the next token decides. `end()` prints the rest of the final answer and a newline.
    """

    def __init__(self, tokenizer: Any, generation_config: Any, stream: Any = None, skip_prompt: bool = True):
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.stream = stream
        self.skip_prompt = skip_prompt
        self.stop_ids = set(stop_token_ids(generation_config))
        special = set(getattr(tokenizer, "all_special_ids", []))
        texts = (tokenizer.decode([i]).strip() for i in self.stop_ids if i not in special)
        self.stop_strings = sorted({t for t in texts if t}, key=len)
        self.reset()

    def reset(self) -> None:
        self.ids: list[int] = []
        self.printed = ""
        self._prompt_pending = self.skip_prompt
        self._stopped = False

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text)
        stream.flush()

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("AnswerStreamer supports batch size 1 only.")
            value = value[0]
        if self._prompt_pending:
            self._prompt_pending = False
            return
        if self._stopped:
            return
        for token in value.tolist():
            if token in self.stop_ids:
                self._stopped = True
                break
            self.ids.append(int(token))
        self._show(self._safe_text())

    def _safe_text(self) -> str:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        for stop in self.stop_strings:
            if stop in text:
                text = text[: text.index(stop)]
                self._stopped = True
        text = text.lstrip()
        if "\ufffd" in text[-4:]:  # an incomplete multi-byte character: wait for its other bytes
            text = text[: text.rindex("\ufffd")]
        hold = 0
        for stop in self.stop_strings:
            for length in range(min(len(stop) - 1, len(text)), 0, -1):
                if stop.startswith(text[-length:]):
                    hold = max(hold, length)
                    break
        return text[: len(text) - hold].rstrip()

    def _show(self, text: str) -> None:
        if len(text) > len(self.printed) and text.startswith(self.printed):
            self._write(text[len(self.printed) :])
            self.printed = text

    def end(self) -> None:
        final = answer_from_ids(self.ids, self.tokenizer, self.generation_config)
        if final.startswith(self.printed):
            self._show(final)
        self._write("\n")
        self.answer = final
        self.reset()


# ----------------------------------------------------------------------------------------------------------------
# Batched generation (describe, eval)
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class WorkItem:
    """One question about one video (or image); `audio` asks for the video's sound track."""

    video: str
    question: str
    audio: bool = True


class _MediaCache:
    """Decode each (video, audio) once; keeps the last `size` results (errors too: a bad file fails once)."""

    def __init__(self, processor: Any, num_frames: int | None, fps: float | None, size: int = 32):
        self.processor = processor
        self.num_frames = num_frames
        self.fps = fps
        self.size = size
        self._items: OrderedDict[tuple[str, bool], Any] = OrderedDict()

    def get(self, video: str, audio: bool) -> list[dict[str, Any]]:
        key = (video, audio)
        if key not in self._items:
            try:
                value: Any = self._prepare(video, audio)
            except Exception as error:  # reported per item by the caller
                value = error
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        value = self._items[key]
        if isinstance(value, Exception):
            raise value
        return value

    def _prepare(self, video: str, audio: bool) -> list[dict[str, Any]]:
        if not os.path.exists(video):
            raise FileNotFoundError(f"Media file {video!r} does not exist.")
        # The processor's own preparation (as VideoLlamaChat uses it): decodes the frames and, when asked, the sound
        # track, falling back to the video-only prompt with a warning when there is none.
        (message,) = self.processor.prepare_conversation(
            [{"role": "user", "content": [{"type": "video", "path": video}]}],
            audio,
            "warn",
            self.num_frames,
            self.fps,
        )
        return message["content"]


def _generate_batch(model: Any, processor: Any, conversations: list[list[dict]], gen_kwargs: dict) -> list[str]:
    inputs = processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "left"},
    )
    inputs = inputs.to(device=model.device, dtype=model.dtype)
    with torch.inference_mode():
        output = model.generate(**inputs, **gen_kwargs)
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
    return [answer_from_ids(ids, processor.tokenizer, model.generation_config) for ids in new_tokens]


def _error_text(error: BaseException) -> str:
    if isinstance(error, (OSError, ValueError)) and str(error):
        return _one_line(error)
    return f"{type(error).__name__}: {_one_line(error)}"


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)


def generate_answers(
    model: Any,
    processor: Any,
    items: Sequence[WorkItem],
    batch_size: int = 8,
    num_frames: int | None = None,
    fps: float | None = None,
    generate_kwargs: dict[str, Any] | None = None,
    progress: bool | Any = False,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Answer `items` in batches; yields `(index, result)` in order, a batch at a time.

    `result` is `{"answer": str, "audio_used": bool}` or, when the item's media cannot be used or its generation
    fails, `{"error": message}`. Media are decoded per item (a bad file only fails its own item) and once per
    (video, audio) pair; a batch whose generation fails is retried item by item. Greedy unless `generate_kwargs`
    says otherwise. `progress` may be `True` (a tqdm bar on stderr) or a tqdm-like object with `update()`.
    """
    gen_kwargs = {"max_new_tokens": 64, "do_sample": False, **(generate_kwargs or {})}
    cache = _MediaCache(processor, num_frames, fps, size=max(32, 2 * batch_size))
    bar = _progress_bar(progress, len(items), "answering")
    try:
        for start in range(0, len(items), batch_size):
            indices = list(range(start, min(start + batch_size, len(items))))
            results: dict[int, dict[str, Any]] = {}
            ready: list[tuple[int, list[dict], bool]] = []
            for index in indices:
                item = items[index]
                try:
                    blocks = cache.get(item.video, item.audio)
                except Exception as error:
                    results[index] = {"error": _error_text(error)}
                    continue
                conversation = [{"role": "user", "content": [*blocks, {"type": "text", "text": item.question}]}]
                ready.append((index, conversation, any(b.get("type") == "audio" for b in blocks)))
            for index, answer in _answer_ready(model, processor, ready, gen_kwargs).items():
                results[index] = answer
            for index in indices:
                yield index, results[index]
            if bar is not None:
                bar.update(len(indices))
    finally:
        if bar is not None and progress is True:
            bar.close()


def _answer_ready(
    model: Any, processor: Any, ready: list[tuple[int, list[dict], bool]], gen_kwargs: dict
) -> dict[int, dict[str, Any]]:
    if not ready:
        return {}
    try:
        answers = _generate_batch(model, processor, [conv for _, conv, _ in ready], gen_kwargs)
        return {index: {"answer": a, "audio_used": audio} for (index, _, audio), a in zip(ready, answers)}
    except Exception as error:
        if len(ready) == 1:
            logger.debug("generation failed", exc_info=True)
            return {ready[0][0]: {"error": _error_text(error)}}
        logger.info("A batch of %d failed (%s); retrying its items one by one.", len(ready), _one_line(error))
    out: dict[int, dict[str, Any]] = {}
    for entry in ready:
        out.update(_answer_ready(model, processor, [entry], gen_kwargs))
    return out


def _progress_bar(progress: bool | Any, total: int, desc: str) -> Any:
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True)
    if progress:
        return progress
    return None


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------


def load_eval_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read an evaluation JSONL (see `world_videollama`): video paths are made absolute relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise CliError(f"the evaluation file {str(path)!r} does not exist.")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CliError(f"{path}:{number}: not valid JSON ({error.msg}).") from error
            missing = [key for key in ("video", "question", "answer") if not isinstance(record.get(key), str)]
            if missing:
                raise CliError(f"{path}:{number}: missing or non-text {', '.join(repr(m) for m in missing)}.")
            video = Path(os.path.expanduser(record["video"]))
            record["video"] = str(video if video.is_absolute() else path.parent / video)
            record.setdefault("type", "all")
            record["audio"] = bool(record.get("audio", True))
            records.append(record)
    if not records:
        raise CliError(f"the evaluation file {str(path)!r} has no records.")
    return records


def score_predictions(records: Sequence[dict[str, Any]], predictions: Sequence[str | None]) -> dict[str, Any]:
    """Exact match after `normalize_answer`, per question `type` and overall. A `None` prediction counts as wrong."""
    from .world_videollama import normalize_answer

    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions.")
    per_type: dict[str, dict[str, Any]] = {}
    rows = []
    correct_total = 0
    for record, prediction in zip(records, predictions):
        correct = prediction is not None and normalize_answer(prediction) == normalize_answer(record["answer"])
        kind = str(record.get("type", "all"))
        bucket = per_type.setdefault(kind, {"correct": 0, "count": 0})
        bucket["count"] += 1
        bucket["correct"] += int(correct)
        correct_total += int(correct)
        rows.append({**record, "prediction": prediction, "correct": correct})
    for bucket in per_type.values():
        bucket["accuracy"] = bucket["correct"] / bucket["count"]
    count = len(records)
    return {
        "overall": {"correct": correct_total, "count": count, "accuracy": correct_total / count if count else 0.0},
        "per_type": dict(sorted(per_type.items())),
        "predictions": rows,
    }


def evaluate_model(
    model: Any,
    processor: Any,
    records: Sequence[dict[str, Any]],
    batch_size: int = 8,
    progress: bool | Any = False,
    max_new_tokens: int = 64,
    num_frames: int | None = None,
    fps: float | None = None,
    use_audio: bool = True,
    generate_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Answer every record (greedy, batched) and score it: see `score_predictions` for the result's layout.

    `records` hold `video` (a path), `question`, `answer`, `type` and `audio` (ask with the sound track; ignored with
    `use_audio=False`). Each prediction row also gets `audio_used`, and `error` when the item could not be answered.
    """
    items = [WorkItem(r["video"], r["question"], bool(r.get("audio", True)) and use_audio) for r in records]
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1, **(generate_kwargs or {})}
    outputs: list[dict[str, Any]] = [{} for _ in items]
    for index, result in generate_answers(
        model, processor, items, batch_size, num_frames, fps, generate_kwargs=kwargs, progress=progress
    ):
        outputs[index] = result
    report = score_predictions(records, [out.get("answer") for out in outputs])
    for row, out in zip(report["predictions"], outputs):
        row["audio_used"] = out.get("audio_used", False)
        if "error" in out:
            row["error"] = out["error"]
    report["errors"] = sum(1 for out in outputs if "error" in out)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The per-type accuracy table printed by `videollama eval`."""
    rows = [(kind, b["correct"], b["count"], b["accuracy"]) for kind, b in report["per_type"].items()]
    overall = report["overall"]
    width = max([len("overall"), len("type")] + [len(r[0]) for r in rows])
    lines = [f"{'type':<{width}}  {'correct':>7}  {'total':>6}  {'accuracy':>8}"]
    lines.append("-" * len(lines[0]))
    lines += [f"{k:<{width}}  {c:>7}  {n:>6}  {100 * a:>7.1f}%" for k, c, n, a in rows]
    lines.append("-" * len(lines[0]))
    lines.append(
        f"{'overall':<{width}}  {overall['correct']:>7}  {overall['count']:>6}  {100 * overall['accuracy']:>7.1f}%"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# describe: inputs and resumable results
# ----------------------------------------------------------------------------------------------------------------


def collect_media(paths: Iterable[str], warn: Callable[[str], None] | None = None) -> list[str]:
    """Files as given, folders scanned recursively for video/image extensions, globs expanded; sorted per argument.

    A path that does not exist (and is not a glob) is kept, so that it gets its own error entry.
    """
    warn = warn or (lambda message: logger.warning(message))
    out: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = _key(path)
        if key not in seen:
            seen.add(key)
            out.append(os.path.normpath(path))

    for raw in paths:
        path = os.path.expanduser(raw)
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, name)
                for root, _, names in os.walk(path)
                for name in names
                if os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS
            )
            if not found:
                warn(f"no video or image files in the folder {raw!r}.")
            for name in found:
                add(name)
        elif os.path.exists(path) or not glob.has_magic(path):
            add(path)
        else:
            matches = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
            media = [p for p in matches if os.path.splitext(p)[1].lower() in MEDIA_EXTENSIONS]
            if not media:
                warn(f"the pattern {raw!r} matches no video or image files.")
            for name in media:
                add(name)
    return out


def _key(path: str) -> str:
    return os.path.normcase(os.path.abspath(os.path.expanduser(path)))


def _read_results(path: Path) -> tuple[OrderedDict[str, dict], bool]:
    """Entries of a results file by video (the last entry of a video wins), and whether the file is clean."""
    entries: OrderedDict[str, dict] = OrderedDict()
    clean = True
    if not path.is_file():
        return entries, True
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text and not text.endswith("\n"):
        clean = False
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            clean = False  # e.g. a line cut short by an interrupted run: that video is done again
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("video"), str):
            clean = False
            continue
        key = _key(entry["video"])
        if key in entries:
            clean = False
        entries[key] = entry
    return entries, clean


def _part_files(output: Path) -> list[Path]:
    return sorted(output.parent.glob(glob.escape(output.name) + ".part-*"))


def _merge_results(output: Path) -> OrderedDict[str, dict]:
    """Fold the part files of (possibly interrupted) data-parallel runs into `output`; rewrite it only if needed."""
    entries, clean = _read_results(output)
    parts = _part_files(output)
    for part in parts:
        part_entries, _ = _read_results(part)
        for key, entry in part_entries.items():
            entries.pop(key, None)
            entries[key] = entry
    if parts or not clean:
        tmp = output.with_name(output.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for entry in entries.values():
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        os.replace(tmp, output)
        for part in parts:
            part.unlink()
    return entries


# ----------------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------------


def _check_media_file(path: str) -> None:
    from .media_io_videollama import MediaDecodeError, probe_video

    if not os.path.exists(path):
        raise CliError(f"the file {path!r} does not exist.")
    if os.path.isdir(path):
        raise CliError(f"{path!r} is a folder; pass a video or image file.")
    if os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS:
        return  # decoded (and checked) with the first question
    try:
        probe_video(path)
    except MediaDecodeError as error:
        raise CliError(_one_line(error)) from error


def cmd_chat(args: argparse.Namespace) -> int:
    from .pipeline_videollama import VideoLlamaChat

    video = os.path.expanduser(args.video)
    _check_media_file(video)
    _seed(args.seed)
    model, processor = load_model(args.model, args.device, args.dtype)
    chat = VideoLlamaChat(
        model,
        processor,
        load_audio_from_video=not args.no_audio,
        num_frames=args.num_frames,
        fps=args.fps,
        **generation_kwargs(args),
    )
    streamer = AnswerStreamer(processor.tokenizer, model.generation_config)
    first: list[dict[str, Any]] = [{"type": "video", "path": video}]

    def ask(question: str) -> str:
        nonlocal first
        content = [*first, {"type": "text", "text": question}]
        answer = chat.ask(content, streamer=streamer)
        first = []
        return answer

    if args.question is not None:
        ask(args.question)
        return 0

    interactive = sys.stdin.isatty()
    print(
        f"Chatting about {video} ({'video only' if args.no_audio else 'video with its sound'}). "
        "Type 'exit' or press Ctrl-D to stop.",
        file=sys.stderr,
    )
    while True:
        try:
            question = input("You: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        question = question.strip()
        if not interactive and question:
            print(question)  # piped input: echo, so the transcript reads like a conversation
        if not question:
            continue
        if question.lower() in EXIT_WORDS:
            return 0
        sys.stdout.write("Video-LLaMA: ")
        sys.stdout.flush()
        try:
            ask(question)
        except KeyboardInterrupt:
            print()
            return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    # Under `accelerate launch` (torchrun) on CPUs the processes talk over gloo only when asked for the CPU.
    on_cpu = args.device == "cpu" if args.device else not torch.cuda.is_available()
    state = PartialState(cpu=on_cpu)
    output = Path(os.path.expanduser(args.output))
    if output.is_dir():
        raise CliError(f"--output {str(output)!r} is a folder; pass a .jsonl file.")
    output.parent.mkdir(parents=True, exist_ok=True)
    videos = collect_media(
        args.paths, warn=(lambda m: logger.warning(m)) if state.is_main_process else (lambda m: None)
    )

    if state.is_main_process:
        done = _merge_results(output)  # also folds in what an interrupted data-parallel run left behind
    state.wait_for_everyone()
    if not state.is_main_process:
        done, _ = _read_results(output)
    todo = []
    for video in videos:
        entry = done.get(_key(video))
        if entry is None or ("error" in entry and "answer" not in entry and args.retry_errors):
            todo.append(video)
    if not videos:
        raise CliError("no video or image files to describe.")
    if state.is_main_process:
        print(
            f"describe: {len(todo)} to process, {len(videos) - len(todo)} already in {output} "
            f"({state.num_processes} process{'es' if state.num_processes > 1 else ''})",
            file=sys.stderr,
        )

    if todo:
        device = args.device or str(state.device)
        _seed(args.seed)
        model, processor = load_model(args.model, device, args.dtype)
        sink = output if state.num_processes == 1 else output.with_name(f"{output.name}.part-{state.process_index}")
        with state.split_between_processes(todo) as mine:
            items = [WorkItem(video, args.question, not args.no_audio) for video in mine]
            bar = _progress_bar(state.is_local_main_process, len(items), "describe")
            errors = 0
            with open(sink, "a", encoding="utf-8") as handle:
                try:
                    for index, result in generate_answers(
                        model,
                        processor,
                        items,
                        args.batch_size,
                        args.num_frames,
                        args.fps,
                        generate_kwargs=generation_kwargs(args),
                        progress=bar,
                    ):
                        entry: dict[str, Any] = {"video": items[index].video}
                        if "error" in result:
                            errors += 1
                            entry["error"] = result["error"]
                        else:
                            entry.update(
                                question=args.question, answer=result["answer"], audio_used=result["audio_used"]
                            )
                        handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
                        handle.flush()
                finally:
                    if bar is not None:
                        bar.close()
            if errors:
                logger.warning(
                    "%d of %d file(s) could not be described (see their 'error' entries).", errors, len(items)
                )
    state.wait_for_everyone()
    if state.is_main_process:
        entries = _merge_results(output)
        print(f"describe: {len(entries)} result(s) in {output}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    output = Path(os.path.expanduser(args.output))
    if args.data is not None:
        data = Path(os.path.expanduser(args.data))
    else:
        from .world_videollama import generate_split

        data_dir = Path(os.path.expanduser(args.data_dir)) if args.data_dir else _world_cache(args)
        print(f"eval: writing/using the {args.split} world split in {data_dir}", file=sys.stderr)
        data = generate_split(data_dir, args.split, args.num_videos, args.seed, progress=not args.quiet)
    records = load_eval_records(data)
    if args.max_questions is not None:
        records = records[: args.max_questions]
    _seed(args.seed)
    model, processor = load_model(args.model, args.device, args.dtype)
    extra = generation_kwargs(args)
    extra.pop("max_new_tokens")
    report = evaluate_model(
        model,
        processor,
        records,
        batch_size=args.batch_size,
        progress=not args.quiet,
        max_new_tokens=args.max_new_tokens,
        num_frames=args.num_frames,
        fps=args.fps,
        use_audio=not args.no_audio,
        generate_kwargs=extra,
    )
    report = {
        "model": str(args.model or DEFAULT_MODEL),
        "data": str(data),
        "num_questions": len(records),
        **report,
    }
    print(format_report(report))
    if report["errors"]:
        print(f"({report['errors']} question(s) could not be answered; they count as wrong)", file=sys.stderr)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    print(f"eval: report written to {output}", file=sys.stderr)
    return 0


def _world_cache(args: argparse.Namespace) -> Path:
    base = os.environ.get("VIDEOLLAMA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "videollama"
    )
    return Path(base) / "world" / f"{args.split}-n{args.num_videos}-seed{args.seed}"


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def _convert(argv: list[str]) -> int:
    from .convert_videollama_weights_to_hf import main as convert_main

    return convert_main(argv, prog="videollama convert")


def _hub(command: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        from .hub_videollama import main as hub_main

        return hub_main([command, *argv], prog="videollama")

    return run


DELEGATED: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "convert": (_convert, "convert the original release files into a Hugging Face folder (see `convert --help`)"),
    "export": (_hub("export"), "export a converted folder as a Hub-ready remote-code folder"),
    "push": (_hub("push"), "upload an exported folder to the Hugging Face Hub"),
}


# ----------------------------------------------------------------------------------------------------------------
# Parser and entry point
# ----------------------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", "-v", action="store_true", help="show info logs and full tracebacks")

    model_options = argparse.ArgumentParser(add_help=False)
    group = model_options.add_argument_group("model and generation")
    group.add_argument(
        "--model",
        help="a converted Video-LLaMA folder or a Hub id (default: the bundled videollama-world-small)",
    )
    group.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)")
    group.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="weights dtype (default: float32 on CPU, bfloat16 (or float16) on GPU)",
    )
    group.add_argument("--no-audio", action="store_true", help="ignore the videos' sound tracks (default: hear them)")
    group.add_argument(
        "--num-frames", type=_positive_int, help="frames sampled per video (default: the processor's, 8)"
    )
    group.add_argument(
        "--fps", type=_positive_float, help="sample about this many frames per second (instead of --num-frames)"
    )
    group.add_argument("--max-new-tokens", type=_positive_int, default=64, help="answer length limit (default: 64)")
    group.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=_positive_float, default=0.7, help="sampling temperature (with --sample)")
    group.add_argument("--top-p", type=_positive_float, default=0.9, help="nucleus sampling (with --sample)")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    parser = argparse.ArgumentParser(
        prog="videollama",
        description="Video-LLaMA: chat with videos (and their sound), caption or evaluate many, convert checkpoints.",
        epilog="Run `videollama COMMAND --help` for the options of a command.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    chat = sub.add_parser(
        "chat",
        parents=[common, model_options],
        help="ask a video questions (one answer, or an interactive chat)",
        description=(
            "Ask about a video (or image). With QUESTION, print one answer and exit; without, chat interactively: "
            "type questions at the `You: ` prompt, follow-ups reuse everything already computed; `exit`, `quit`, "
            "Ctrl-D or Ctrl-C end the chat. Answers stream as they are generated."
        ),
    )
    chat.add_argument("video", help="video (or image) file")
    chat.add_argument("question", nargs="?", help="the question (omit for an interactive chat)")

    describe = sub.add_parser(
        "describe",
        parents=[common, model_options],
        help="answer one question (default: a caption) for many videos, to JSONL",
        description=(
            "Caption (or ask --question about) many videos and images, in batches, writing one JSON object per "
            'input to --output: {"video", "question", "answer", "audio_used"}, or {"video", "error"} for a file '
            "that cannot be read. Re-running skips inputs already in the output (--retry-errors redoes failed "
            "ones). Under `accelerate launch` the inputs are split between the processes."
        ),
    )
    describe.add_argument("paths", nargs="+", metavar="PATH", help="video/image files, folders (scanned), or globs")
    describe.add_argument("--output", "-o", required=True, help="results file (JSONL), appended to / resumed")
    describe.add_argument("--question", default=DEFAULT_QUESTION, help=f"default: {DEFAULT_QUESTION!r}")
    describe.add_argument("--batch-size", type=_positive_int, default=8, help="videos per generation batch")
    describe.add_argument("--retry-errors", action="store_true", help="process inputs whose entry is an error again")

    evaluate = sub.add_parser(
        "eval",
        parents=[common, model_options],
        help="accuracy on the synthetic world (or an eval JSONL), per question type",
        description=(
            "Evaluate a model (greedy) on a split of the synthetic audio-visual world, generated with --split, "
            "--num-videos and --seed, or on --data FILE.jsonl (lines with video, question, answer, type, audio; "
            "video paths relative to the file). Answers are compared after normalize_answer (case, punctuation, "
            "spacing). Prints accuracy per type and overall; --output gets the report with every prediction."
        ),
    )
    source = evaluate.add_mutually_exclusive_group()
    source.add_argument("--data", help="an evaluation JSONL file (instead of a generated world split)")
    source.add_argument(
        "--split", choices=["heldout", "train"], default="heldout", help="world split (default: heldout)"
    )
    evaluate.add_argument("--num-videos", type=_positive_int, default=50, help="videos in the generated split")
    evaluate.add_argument(
        "--data-dir", help="where to generate the split (default: a cache folder under ~/.cache/videollama/world)"
    )
    evaluate.add_argument("--output", "-o", required=True, help="report file (JSON)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=8, help="questions per generation batch")
    evaluate.add_argument("--max-questions", type=_positive_int, help="evaluate only the first N questions")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")

    for command in (chat, describe, evaluate):
        command.set_defaults(_parser=command)
    for name, (_, text) in DELEGATED.items():
        delegated = sub.add_parser(name, help=text, add_help=False, description=text)
        delegated.add_argument("args", nargs=argparse.REMAINDER)
    return parser


@contextlib.contextmanager
def _cli_logging(verbose: bool) -> Iterator[None]:
    """Quiet transformers (errors only, no progress bars) and show this package's warnings as `warning: ...`."""
    from huggingface_hub.utils import logging as hub_logging

    previous_verbosity = hf_logging.get_verbosity()
    previous_hub = hub_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    package = logging.getLogger("transformers_videollama")
    previous = (package.level, package.propagate)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname_lower)s: %(message)s"))
    if verbose:
        hf_logging.set_verbosity_info()
    else:
        hf_logging.set_verbosity_error()
        hub_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    package.setLevel(logging.DEBUG if verbose else logging.WARNING)
    package.propagate = False
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(previous[0])
        package.propagate = previous[1]
        hf_logging.set_verbosity(previous_verbosity)
        hub_logging.set_verbosity(previous_hub)
        if bars:
            hf_logging.enable_progress_bar()


class _StderrHandler(logging.Handler):
    """Writes to the current `sys.stderr` (not the one at creation), one line per record."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            record.levelname_lower = record.levelname.lower()
            tqdm.write(self.format(record), file=sys.stderr)  # above any progress bar, not through it
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "chat": cmd_chat,
    "describe": cmd_describe,
    "eval": cmd_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `videollama` console script. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _run_guarded(lambda: DELEGATED[argv[0]][0](argv[1:]), verbose="--verbose" in argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if getattr(args, "num_frames", None) is not None and getattr(args, "fps", None) is not None:
        args._parser.error("argument --fps: not allowed with argument --num-frames")
    if args.command in DELEGATED:
        return _run_guarded(lambda: DELEGATED[args.command][0](args.args), verbose=args.verbose)
    return _run_guarded(lambda: COMMANDS[args.command](args), verbose=args.verbose)


def _run_guarded(run: Callable[[], int], verbose: bool) -> int:
    with _cli_logging(verbose):
        try:
            return int(run() or 0)
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # e.g. `videollama chat ... | head -1`
            with contextlib.suppress(Exception):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            return 1
        except Exception as error:
            if verbose:
                raise
            if isinstance(error, CliError):
                print(f"error: {error}", file=sys.stderr)
            else:
                print(f"error: {_error_text(error)} (run with --verbose for details)", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
