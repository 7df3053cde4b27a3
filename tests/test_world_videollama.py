"""The synthetic audio-visual world: deterministic, real mp4 files, held-out combinations really held out."""

import json
from pathlib import Path

import av
import numpy as np
import pytest

import transformers_videollama as tv
from transformers_videollama import world_videollama as world


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    world.generate_split(out, "train", 12, seed=3)
    return out


def test_scenes_are_deterministic_and_splits_disjoint():
    first = [s.id + repr(s.objects) + str(s.sound) for s in world.iter_scenes("train", 50, 7)]
    again = [s.id + repr(s.objects) + str(s.sound) for s in world.iter_scenes("train", 50, 7)]
    assert first == again
    train = list(world.iter_scenes("train", 400, 0))
    heldout = list(world.iter_scenes("heldout", 200, 0))
    assert not any(world.is_heldout(s) for s in train)
    assert all(world.is_heldout(s) for s in heldout)
    pairs = {(o.colour, o.shape) for s in train for o in s.objects}
    assert not pairs & world.HELDOUT_COLOUR_SHAPE
    assert {o.colour for s in train for o in s.objects} == set(world.COLOURS)
    assert {o.shape for s in train for o in s.objects} == set(world.SHAPES)
    assert {o.motion for s in train for o in s.objects} == set(world.MOTIONS)
    # both splits have one- and two-object scenes, every sound, and videos without an audio track
    for scenes in (train, heldout):
        assert {len(s.objects) for s in scenes} == {1, 2}
        assert {s.sound for s in scenes} == {*world.SOUNDS, None}
    # the held-out split also varies the formats beyond training
    assert {(s.width, s.height) for s in heldout} - {(s.width, s.height) for s in train}
    assert {s.fps for s in heldout} - {s.fps for s in train}
    assert max(s.duration for s in heldout) > max(s.duration for s in train)


def test_any_split_is_the_whole_world_and_leaves_the_others_unchanged():
    # "any" (the stand-ins' pretraining data) draws every pair, in the training formats, from its own stream
    scenes = list(world.iter_scenes("any", 600, 0))
    pairs = {(o.colour, o.shape) for s in scenes for o in s.objects}
    assert pairs >= world.HELDOUT_COLOUR_SHAPE
    assert {(s.width, s.height) for s in scenes} <= {(96, 96), (112, 84)}
    # the training split's stream is the one it always had (its first scene, hard-coded)
    first = next(world.iter_scenes("train", 1, 0))
    assert [(o.colour, o.shape, o.motion) for o in first.objects] == [("green", "triangle", "right")]
    assert (first.sound, first.fps, first.id) == ("low tone", 10, "train-00000")
    with pytest.raises(ValueError, match="split must be one of"):
        world.sample_scene(np.random.default_rng(0), "validation")


def test_two_object_fraction_keeps_the_stream_and_sets_the_share():
    """Training data may hold more two-object scenes than the world's 30 %: the same stream, full counts skipped."""
    plain = list(world.iter_scenes("train", 300, 0))
    mixed = list(world.iter_scenes("train", 40, 0, two_object_fraction=0.5))
    assert len(mixed) == 40 and sum(len(s.objects) == 2 for s in mixed) == 20
    by_id = {s.id: s for s in plain}
    assert all(repr(by_id[s.id].objects) == repr(s.objects) for s in mixed)  # same scenes, same ids as the stream
    twos = [s.id for s in plain if len(s.objects) == 2][:20]
    assert [s.id for s in mixed if len(s.objects) == 2] == twos  # the stream's first two-object scenes, in order
    assert sum(len(s.objects) == 2 for s in plain) / len(plain) < 0.4
    with pytest.raises(ValueError, match="two_object_fraction must lie in"):
        next(world.iter_scenes("train", 4, 0, two_object_fraction=1.5))


def test_written_files_are_real_h264_aac(split):
    scenes = [json.loads(line) for line in (split / "scenes.jsonl").read_text().splitlines()]
    assert len(scenes) == 12
    for scene in scenes:
        with av.open(str(split / "videos" / f"{scene['id']}.mp4")) as container:
            video = container.streams.video[0]
            assert video.codec_context.name == "h264"
            assert (video.codec_context.width, video.codec_context.height) == (scene["width"], scene["height"])
            frames = sum(1 for _ in container.decode(video=0))
            assert frames == round(scene["fps"] * scene["duration"])
            if scene["sound"] is None:
                assert not container.streams.audio
            else:
                assert container.streams.audio[0].codec_context.name == "aac"
                assert container.streams.audio[0].sample_rate == scene["sample_rate"]


def test_pixels_and_sound_carry_the_labels(split):
    """What the processor decodes shows the object where the scene says, and the sound has the right pitch."""
    scene = next(
        s for s in world.iter_scenes("train", 100, 11) if len(s.objects) == 1 and s.objects[0].motion == "right"
    )
    path = world.write_video(scene, split / "right.mp4")
    decoded = tv.VideoLlamaVideoProcessor(size={"height": 64, "width": 64}).load(str(path))
    colour = np.array(world.COLOURS[scene.objects[0].colour], np.float32)
    centres = []
    for frame in decoded.frames:
        mask = np.abs(frame.astype(np.float32) - colour).sum(-1) < 60
        centres.append(np.nonzero(mask)[1].mean())
    assert all(b > a for a, b in zip(centres, centres[1:])), centres  # moves right, frame after frame
    tone = world.Scene(objects=[], sound="high tone", sample_rate=16000, duration=1.0, pitch=1.0)
    spectrum = np.abs(np.fft.rfft(world.render_audio(tone)))
    assert abs(np.argmax(spectrum) * 16000 / len(world.render_audio(tone)) - 1800) < 5


def test_questions_answers_and_normalisation():
    scene = world.Scene(
        objects=[
            world.SceneObject("blue", "square", "left", (0.72, 0.5), 0.3),
            world.SceneObject("red", "circle", "still", (0.28, 0.5), 0.3),
        ],
        sound=None,
    )
    qas = {qa["question"]: qa for qa in world.questions(scene)}
    assert qas["What colour is the circle?"]["answer"] == "The colour of the circle is red."
    assert qas["How is the square moving?"]["answer"] == "The square is moving left."
    assert qas["What shapes do you see?"]["answer"] == "The shapes are a circle and a square."  # left to right
    assert qas["How many objects are there?"]["answer"] == "There are two objects."
    assert qas["What do you hear?"] == {
        "type": "no_sound",
        "question": "What do you hear?",
        "answer": "There is no sound.",
    }
    assert world.caption(scene) == "A red circle not moving and a blue square moving left. There is no sound."
    single = world.Scene(objects=[world.SceneObject("green", "cross", "up", (0.5, 0.72), 0.4)], sound="beeping")
    answers = {qa["type"]: qa["answer"] for qa in world.questions(single)}
    assert answers == {
        "colour": "The colour is green.",
        "shape": "The shape is a cross.",
        "motion": "It is moving up.",
        "count": "There is one object.",
        "sound": "The sound is beeping.",
        "describe": "A green cross moving up. The sound is beeping.",
    }
    assert {qa["type"]: qa["answer"] for qa in world.questions(single, with_sound=False)}["no_sound"] == (
        "There is no sound."
    )
    assert world.normalize_answer("  The colour is RED! ") == "the colour is red"


def test_split_files_and_idempotent_rewrite(split):
    lines = [json.loads(line) for line in (split / "qa.jsonl").read_text().splitlines()]
    assert {"video", "question", "answer", "type", "audio"} <= set(lines[0])
    assert {line["type"] for line in lines} >= {"colour", "shape", "motion", "count", "describe"}
    assert all((split / line["video"]).is_file() for line in lines)
    # train.jsonl is a training set in the package's own JSONL format
    records = tv.load_training_data("jsonl", str(split / "train.jsonl"))
    assert len(records) == 12 and all(len(r["conversations"]) >= 10 for r in records)
    assert all(Path(r["media"]).is_file() for r in records)
    before = {p.name: p.stat().st_mtime_ns for p in (split / "videos").glob("*.mp4")}
    world.generate_split(split, "train", 12, seed=3)
    after = {p.name: p.stat().st_mtime_ns for p in (split / "videos").glob("*.mp4")}
    assert before == after  # existing videos of the same scenes are not rewritten


def test_sharded_writes_add_up_to_the_split(split, tmp_path):
    # Two processes can write one split's videos (shard=(k, 2)); a last unsharded call writes only the jsonl files,
    # which equal those of a split written in one go.
    out = tmp_path / "sharded"
    world.generate_split(out, "train", 12, seed=3, shard=(1, 2))
    assert len(list((out / "videos").glob("*.mp4"))) == 6 and not (out / "qa.jsonl").exists()
    world.generate_split(out, "train", 12, seed=3, shard=(0, 2))
    written = {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.mp4")}
    assert sorted(written) == sorted(p.name for p in (split / "videos").glob("*.mp4"))
    world.generate_split(out, "train", 12, seed=3)
    assert written == {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.mp4")}  # none rewritten
    for name in ("qa.jsonl", "train.jsonl", "scenes.jsonl"):
        assert (out / name).read_text().replace(str(out), "") == (split / name).read_text().replace(str(split), "")
    for bad in ((2, 2), (0,), 2):
        with pytest.raises(ValueError, match="shard must be"):
            world.generate_split(out, "train", 12, seed=3, shard=bad)
