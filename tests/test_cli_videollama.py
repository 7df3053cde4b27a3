"""The `videollama` console script: chat (one-shot, interactive through a pseudo-terminal, streaming), describe
(batched, resumable, bad files, data-parallel under `accelerate launch`), eval (report layout, scoring), delegation
and error handling. A tiny random model is saved once per module; its answers are noise, so only structure is checked.
"""

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _videollama_training import make_model_dir
from transformers import GenerationConfig

from transformers_videollama import VideoLlamaChat, world_videollama
from transformers_videollama import cli_videollama as cli
from transformers_videollama.pipeline_videollama import answer_from_ids


MODULE = [sys.executable, "-m", "transformers_videollama.cli_videollama"]
SCRIPT = Path(sys.executable).with_name("videollama")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
STOP_IDS = [2, 25, 26]  # </s>, and the fixture vocabulary's `###` / `▁###` (Vicuna's turn separator)


def _console() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.is_file() else MODULE


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The in-process runs are tiny: one thread avoids contention with the subprocesses and other work."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = make_model_dir(tmp_path_factory.mktemp("cli_model"), lm_head_scale=50.0)
    config = GenerationConfig.from_pretrained(path)
    config.eos_token_id = STOP_IDS  # the converter's Vicuna stop rule
    config.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(model_dir):
    return cli.load_model(str(model_dir), "cpu", "float32")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 3-video world split (all with sound) plus a clip folder: those videos, a silent one and a corrupt file."""
    root = tmp_path_factory.mktemp("cli_media")
    qa = world_videollama.generate_split(root / "world", "heldout", num_videos=3, seed=0)
    clips = root / "clips"
    clips.mkdir()
    for video in sorted((root / "world" / "videos").glob("*.mp4")):
        shutil.copy(video, clips / video.name)
    scene = world_videollama.sample_scene(np.random.default_rng(7), "train")
    scene.sound, scene.duration = None, 1.0
    world_videollama.write_video(scene, root / "silent.mp4")
    shutil.copy(root / "silent.mp4", clips / "silent.mp4")
    (clips / "bad.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (clips / "notes.txt").write_text("not a video")
    return {"root": root, "qa": qa, "clips": clips, "video": str(sorted(clips.glob("heldout-*.mp4"))[0])}


def _run(args, timeout=120, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=ENV, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# help, usage and errors
# ---------------------------------------------------------------------------------------------------------------


def test_console_script_help_and_a_missing_video(model_dir, tmp_path):
    """The installed script: `--help` lists the commands; a missing video is one `error:` line, exit 1, no traceback.

    (Both processes start at once: most of their time is importing torch and transformers.)
    """
    missing = [*_console(), "chat", str(tmp_path / "missing.mp4"), "What?", "--model", str(model_dir)]
    processes = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for argv in ([*_console(), "--help"], missing)
    ]
    (help_out, help_err), (out, err) = (process.communicate(timeout=120) for process in processes)
    assert processes[0].returncode == 0, help_err
    for command in ("chat", "describe", "eval", "convert", "export", "push"):
        assert command in help_out
    assert processes[1].returncode == 1
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    "command, expected",
    [
        (["chat"], ["--no-audio", "--num-frames", "--fps", "--max-new-tokens", "--device", "--dtype", "--model"]),
        (["describe"], ["--output", "--question", "--batch-size", "--retry-errors"]),
        (["eval"], ["--split", "--num-videos", "--seed", "--data", "--data-dir", "--max-questions", "--output"]),
        (["convert"], ["--eva-vit", "--vl-checkpoint"]),
        (["export"], ["source", "output"]),
        (["push"], ["repo_id"]),
    ],
)
def test_subcommand_help(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in expected), out


def test_usage_errors_exit_2(capsys):
    for argv in (["chat"], ["describe", "x.mp4"], ["eval", "--split", "nope", "-o", "r.json"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["chat", "v.mp4", "q", "--num-frames", "4", "--fps", "2"])
    assert exit_info.value.code == 2 and "not allowed" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_user_mistakes_are_one_line_errors(model_dir, world, tmp_path, capsys):
    cases = [
        (["chat", str(tmp_path / "missing.mp4"), "Hi?", "--model", str(model_dir)], "does not exist"),
        (["chat", world["video"], "Hi?", "--model", str(tmp_path / "no_model")], "does not exist"),
        (["chat", world["video"], "Hi?", "--model", str(tmp_path)], "no config.json"),
        (["chat", str(world["clips"] / "bad.mp4"), "Hi?", "--model", str(model_dir)], "not a readable media file"),
        (["eval", "--data", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "r.json")], "does not exist"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err


def test_missing_bundled_model_says_pass_model(monkeypatch, world, capsys):
    monkeypatch.setattr(cli, "DEFAULT_MODEL", Path("/nonexistent/videollama-world-small"))
    assert cli.main(["chat", world["video"], "Hi?"]) == 1
    assert "--model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# chat
# ---------------------------------------------------------------------------------------------------------------


def test_chat_with_a_question_streams_the_answer(model_dir, loaded, world):
    result = _run([*_console(), "chat", world["video"], "What colour is it?", "--model", str(model_dir),
                   "--max-new-tokens", "6"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    model, processor = loaded
    chat = VideoLlamaChat(model, processor, load_audio_from_video=True, max_new_tokens=6, do_sample=False)
    expected = chat.ask([{"type": "video", "path": world["video"]}, {"type": "text", "text": "What colour is it?"}])
    assert expected  # the tiny model's noise is not empty
    assert result.stdout == expected + "\n"  # streamed text == the final, cleaned answer


def _read_until(fd, needle: bytes, buffer: bytearray, deadline: float) -> bytes:
    while needle not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; got {bytes(buffer)!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the chat ended before {needle!r}; got {bytes(buffer)!r}")
            buffer.extend(chunk)
    index = buffer.index(needle) + len(needle)
    seen = bytes(buffer[:index])
    del buffer[:index]
    return seen


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_interactive_chat_in_a_terminal(model_dir, world):
    master, slave = os.openpty()
    process = subprocess.Popen(
        [*MODULE, "chat", world["video"], "--model", str(model_dir), "--max-new-tokens", "4"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=ENV,
        close_fds=True,
    )
    os.close(slave)
    buffer = bytearray()
    deadline = time.monotonic() + 90
    transcript = b""
    try:
        transcript += _read_until(master, b"You: ", buffer, deadline)
        os.write(master, b"What colour is the object?\n")
        transcript += _read_until(master, b"You: ", buffer, deadline)
        os.write(master, b"And what do you hear?\n")
        transcript += _read_until(master, b"You: ", buffer, deadline)
        os.write(master, b"exit\n")
        assert process.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    text = transcript.decode(errors="replace")
    assert text.count("Video-LLaMA: ") == 2, text
    answers = [line.split("Video-LLaMA: ", 1)[1].strip() for line in text.splitlines() if "Video-LLaMA: " in line]
    assert all(answers) and "Traceback" not in text, text


def test_interactive_chat_ends_cleanly_on_eof(model_dir, world, monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("What is it?\n\nWhat next?\n"))
    assert cli.main(["chat", world["video"], "--model", str(model_dir), "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("Video-LLaMA: ") == 2 and out.count("You: ") == 4


def test_streamer_holds_back_stop_strings(loaded, capsys):
    model, processor = loaded
    tokenizer, config = processor.tokenizer, model.generation_config
    words = tokenizer("Hello there", add_special_tokens=False).input_ids
    cases = [
        [*words, 25, *words],  # a `###` token
        [*words, 7, 265, *words],  # `##` + `#`: the two-token spelling, cut by text
        [*words, 7, 2],  # `##` then </s>: the held-back `##` is part of the answer after all
        [*words, 2, *words],
    ]
    for ids in cases:
        streamer = cli.AnswerStreamer(tokenizer, config)
        streamer.put(torch.tensor([[1, 5, 6]]))  # the prompt: skipped
        for token in ids:
            streamer.put(torch.tensor([token]))
        streamer.end()
        printed = capsys.readouterr().out
        assert printed == answer_from_ids(ids, tokenizer, config) + "\n"
        assert "#" not in printed.replace(answer_from_ids(ids, tokenizer, config), "")


def test_streamer_never_prints_a_stop_marker_midway(loaded):
    import io

    model, processor = loaded
    stream = io.StringIO()
    streamer = cli.AnswerStreamer(processor.tokenizer, model.generation_config, stream=stream)
    streamer.put(torch.tensor([[1]]))
    snapshots = []
    for token in [*processor.tokenizer("It is red", add_special_tokens=False).input_ids, 7, 265, 9, 10]:
        streamer.put(torch.tensor([token]))
        snapshots.append(stream.getvalue())
    assert all("#" not in s for s in snapshots) and snapshots[-1] == "It is red"


# ---------------------------------------------------------------------------------------------------------------
# describe
# ---------------------------------------------------------------------------------------------------------------


def _results(path: Path) -> dict:
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return {Path(e["video"]).name: e for e in entries}


def test_describe_folder_with_a_bad_file_and_resume(model_dir, world, tmp_path, capsys):
    clips = tmp_path / "clips"
    shutil.copytree(world["clips"], clips)
    output = tmp_path / "captions.jsonl"
    argv = ["describe", str(clips), "--output", str(output), "--model", str(model_dir), "--batch-size", "3",
            "--max-new-tokens", "3"]  # fmt: skip
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "5 to process" in err and "has no audio track" in err  # the documented fallback warning
    results = _results(output)
    assert sorted(results) == ["bad.mp4", "heldout-00000.mp4", "heldout-00001.mp4", "heldout-00002.mp4", "silent.mp4"]
    assert set(results["bad.mp4"]) == {"video", "error"} and "bad.mp4" in results["bad.mp4"]["error"]
    for name, entry in results.items():
        if name != "bad.mp4":
            assert set(entry) == {"video", "question", "answer", "audio_used"}
            assert entry["question"] == "Describe the video." and isinstance(entry["answer"], str)
            assert entry["audio_used"] is (name != "silent.mp4")

    # resumable: nothing left to do
    first = output.read_text()
    assert cli.main(argv) == 0
    assert "0 to process, 5 already" in capsys.readouterr().err
    assert output.read_text() == first

    # a new video (given by glob this time) is processed alone
    shutil.copy(world["root"] / "silent.mp4", clips / "new.mp4")
    glob_argv = ["describe", str(clips / "*.mp4"), *argv[2:]]
    assert cli.main(glob_argv) == 0
    assert "1 to process, 5 already" in capsys.readouterr().err
    results = _results(output)
    assert len(results) == 6 and results["new.mp4"]["audio_used"] is False
    assert output.read_text().startswith(first)

    # --retry-errors redoes only the failed file, replacing its entry
    assert cli.main([*argv, "--retry-errors"]) == 0
    assert "1 to process, 5 already" in capsys.readouterr().err
    lines = output.read_text().splitlines()
    assert len(lines) == 6 and sum("error" in json.loads(line) for line in lines) == 1


def test_describe_resumes_after_an_interrupted_run(model_dir, world, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    video = world["video"]
    # a previous run was killed mid-line, and a data-parallel run left a part file behind
    output.write_text(json.dumps({"video": video, "question": "q", "answer": "a", "audio_used": True}) + '\n{"vid')
    part = tmp_path / "out.jsonl.part-1"
    part.write_text(json.dumps({"video": str(world["root"] / "silent.mp4"), "error": "boom"}) + "\n")
    argv = ["describe", video, str(world["root"] / "silent.mp4"), "--output", str(output), "--model",
            str(model_dir), "--max-new-tokens", "2"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "0 to process, 2 already" in capsys.readouterr().err
    assert not part.exists()
    assert [json.loads(line) for line in output.read_text().splitlines()][1]["error"] == "boom"


def test_failed_batches_are_retried_item_by_item(loaded, world, monkeypatch):
    model, processor = loaded
    original = cli._generate_batch

    def flaky(model, processor, conversations, kwargs):
        if any(conv[0]["content"][-1]["text"] == "boom" for conv in conversations):
            raise RuntimeError("generation exploded")
        return original(model, processor, conversations, kwargs)

    monkeypatch.setattr(cli, "_generate_batch", flaky)
    items = [cli.WorkItem(world["video"], q, audio=False) for q in ("What?", "boom", "Why?")]
    items.append(cli.WorkItem(str(world["clips"] / "bad.mp4"), "What?"))
    results = dict(cli.generate_answers(model, processor, items, batch_size=4, generate_kwargs={"max_new_tokens": 2}))
    assert "answer" in results[0] and "answer" in results[2]
    assert results[1] == {"error": "RuntimeError: generation exploded"}
    assert "not a readable media file" in results[3]["error"]


def test_describe_data_parallel_under_accelerate_launch(model_dir, world, tmp_path):
    clips = tmp_path / "clips"
    shutil.copytree(world["clips"], clips)
    output = tmp_path / "captions.jsonl"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
        "-m", "transformers_videollama.cli_videollama",
        "describe", str(clips), "--output", str(output), "--model", str(model_dir), "--batch-size", "2",
        "--max-new-tokens", "2",
    ]  # fmt: skip
    result = _run(command, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "(2 processes)" in result.stderr
    results = _results(output)
    assert len(results) == 5 and list(results.values())[0]["video"].endswith("bad.mp4")
    assert "error" in results["bad.mp4"] and all("answer" in e for n, e in results.items() if n != "bad.mp4")
    assert not list(tmp_path.glob("captions.jsonl.part-*"))


def test_collect_media(world, tmp_path):
    clips = world["clips"]
    found = cli.collect_media([str(clips), str(clips / "heldout-*.mp4"), str(tmp_path / "gone.mp4")])
    names = [Path(p).name for p in found]
    assert names == [
        "bad.mp4",
        "heldout-00000.mp4",
        "heldout-00001.mp4",
        "heldout-00002.mp4",
        "silent.mp4",
        "gone.mp4",
    ]


# ---------------------------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------------------------


def test_eval_on_a_world_split(model_dir, world, tmp_path, capsys):
    output = tmp_path / "report.json"
    argv = ["eval", "--split", "heldout", "--num-videos", "3", "--seed", "0", "--data-dir", str(world["root"] / "world"),
            "--model", str(model_dir), "--max-new-tokens", "2", "--batch-size", "24", "--output", str(output)]  # fmt: skip
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    report = json.loads(output.read_text())
    records = [json.loads(line) for line in Path(world["qa"]).read_text().splitlines()]
    types = sorted({r["type"] for r in records})
    assert list(report["per_type"]) == types
    for kind in types:
        bucket = report["per_type"][kind]
        assert bucket["count"] == sum(r["type"] == kind for r in records)
        assert bucket["accuracy"] == bucket["correct"] / bucket["count"]
        assert kind in table
    assert report["overall"]["count"] == report["num_questions"] == len(records) and "overall" in table
    assert len(report["predictions"]) == len(records) and report["errors"] == 0
    row = report["predictions"][0]
    assert {"video", "question", "answer", "type", "prediction", "correct", "audio_used"} <= set(row)
    assert [p["question"] for p in report["predictions"]] == [r["question"] for r in records]


def test_eval_data_file_max_questions_and_determinism(loaded, world, tmp_path):
    model, processor = loaded
    data = tmp_path / "qa.jsonl"
    rows = [
        {"video": os.path.relpath(world["video"], tmp_path), "question": "What colour?", "answer": "red",
         "type": "colour", "audio": True},
        {"video": str(world["root"] / "silent.mp4"), "question": "What do you hear?", "answer": "silence",
         "type": "no_sound", "audio": False},
        {"video": "missing.mp4", "question": "What?", "answer": "x", "type": "colour", "audio": True},
    ]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = cli.load_eval_records(data)
    assert records[0]["video"] == str(tmp_path / os.path.relpath(world["video"], tmp_path))
    first = cli.evaluate_model(model, processor, records, batch_size=2, max_new_tokens=2)
    second = cli.evaluate_model(model, processor, records, batch_size=3, max_new_tokens=2)
    assert [p["prediction"] for p in first["predictions"]] == [p["prediction"] for p in second["predictions"]]
    assert first["per_type"]["colour"]["count"] == 2 and first["errors"] == 1
    assert first["predictions"][2]["prediction"] is None and "does not exist" in first["predictions"][2]["error"]
    assert first["predictions"][0]["audio_used"] is True and first["predictions"][1]["audio_used"] is False


def test_scoring_normalises_answers():
    records = [
        {"answer": "red", "type": "colour"},
        {"answer": "Moving left", "type": "motion"},
        {"answer": "a red circle moving left, and a low tone.", "type": "describe"},
        {"answer": "blue", "type": "colour"},
        {"answer": "two", "type": "count"},
    ]
    predictions = ["Red.", "moving   LEFT!", "A red circle moving left and a low tone", "green", None]
    report = cli.score_predictions(records, predictions)
    assert report["overall"] == {"correct": 3, "count": 5, "accuracy": 0.6}
    assert report["per_type"]["colour"] == {"correct": 1, "count": 2, "accuracy": 0.5}
    assert report["per_type"]["motion"]["accuracy"] == 1.0 and report["per_type"]["count"]["accuracy"] == 0.0
    assert [p["correct"] for p in report["predictions"]] == [True, True, True, False, False]
    assert "overall" in cli.format_report(report) and "60.0%" in cli.format_report(report)
    with pytest.raises(ValueError):
        cli.score_predictions(records, predictions[:2])


def test_chat_samples_frames_at_the_requested_rate(model_dir, world, monkeypatch, capsys):
    """`chat --fps 2` reaches the frame sampler through `VideoLlamaChat(fps=...)`, not by editing the processor."""
    seen = []
    ask = VideoLlamaChat.ask

    def recording_ask(self, content, **kwargs):  # the real `ask`, then what it decoded
        answer = ask(self, content, **kwargs)
        seen.append((self.messages[0]["content"][0]["video"].metadata, self.processor.video_processor.fps))
        return answer

    monkeypatch.setattr(VideoLlamaChat, "ask", recording_ask)
    argv = ["chat", world["video"], "What?", "--fps", "2", "--max-new-tokens", "2", "--model", str(model_dir)]
    assert cli.main(argv) == 0
    ((metadata, processor_fps),) = seen
    duration = metadata.total_num_frames / metadata.fps
    assert len(metadata.frames_indices) == max(1, round(duration * 2)) != 8
    assert processor_fps is None  # the processor keeps its own setting
