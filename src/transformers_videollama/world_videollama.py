# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""A synthetic audio-visual world: real mp4 files (H.264 + AAC, written with PyAV) with known contents.

The bundled small Video-LLaMA is trained and evaluated on this world, because no real weights or datasets can be
downloaded where it is built. Everything is deterministic from a seed.

A scene is one or two objects over a dark, textured background, and an independent sound track:

    objects   colour  red | green | blue | yellow | purple
              shape   circle | square | triangle | cross
              motion  left | right | up | down | still   (seen only across frames: needs frame order)
    sound     low tone | high tone | rising sweep | falling sweep | beeping | silence   (needs the audio)
              or no audio track at all

Questions and answers about colour, shape, motion, sound, the number of objects and a full description. The
**held-out** split uses only scenes with a colour-shape or a shape-motion pair that never occurs in the training
split (compositional generalisation), and varies resolution, frame rate, duration and audio format beyond training.

    python -m transformers_videollama.world_videollama --split heldout --num-videos 200 --output world/heldout

writes `world/heldout/videos/*.mp4`, `qa.jsonl` (evaluation: one question per line, the format `videollama eval`
reads) and `train.jsonl` (training conversations in the `jsonl` format of `data_videollama`).

Evaluation format (one JSON object per line; paths relative to the file):

    {"video": "videos/00000.mp4", "question": "What colour is the object?", "answer": "red", "type": "colour",
     "audio": true}

`audio` says whether the question is asked with the video's sound track (the CLI's default); `type` groups the
accuracy report. Answers are compared after `normalize_answer` (case, punctuation and spacing).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np


__all__ = [
    "COLOURS",
    "HELDOUT_COLOUR_SHAPE",
    "HELDOUT_SHAPE_MOTION",
    "MOTIONS",
    "SHAPES",
    "SOUNDS",
    "Scene",
    "SceneObject",
    "caption",
    "sound_sentence",
    "generate_split",
    "is_heldout",
    "normalize_answer",
    "questions",
    "render_audio",
    "render_frame",
    "render_frames",
    "sample_scene",
    "write_video",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 60),
    "blue": (50, 100, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 210),
}
SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS = ("left", "right", "up", "down", "still")
SOUNDS = ("low tone", "high tone", "rising sweep", "falling sweep", "beeping", "silence")
MOTION_TEXT = {m: f"moving {m}" for m in MOTIONS[:4]} | {"still": "not moving"}
SOUND_TEXT = {
    "low tone": "a low tone",
    "high tone": "a high tone",
    "rising sweep": "a rising sweep",
    "falling sweep": "a falling sweep",
    "beeping": "beeping",
    "silence": "silence",
}
# Pairs that never occur in the training split (each colour and shape, and each shape and motion, still occur).
HELDOUT_COLOUR_SHAPE = {("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square")}
HELDOUT_SHAPE_MOTION = {("circle", "up"), ("square", "left"), ("triangle", "still"), ("cross", "right")}


@dataclass
class SceneObject:
    colour: str
    shape: str
    motion: str
    start: tuple[float, float]  # centre at t=0, as fractions of width / height
    size: float  # side / diameter as a fraction of min(width, height)
    travel: float = 0.45  # distance covered over the clip, as a fraction of width / height


@dataclass
class Scene:
    objects: list[SceneObject]
    sound: str | None  # None: the file has no audio track
    width: int = 96
    height: int = 96
    fps: int = 10
    duration: float = 3.0
    background: tuple[int, int, int] = (30, 30, 30)
    texture_seed: int = 0
    sample_rate: int = 16000
    stereo: bool = False
    pitch: float = 1.0  # frequency multiplier of the sound
    loudness: float = 0.4
    seed: int = 0
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return max(1, round(self.fps * self.duration))

    def sorted_objects(self) -> list[SceneObject]:
        """Objects in the order captions name them: from left to right (each object keeps to its own half)."""
        return sorted(self.objects, key=lambda o: o.start[0])


def is_heldout(scene: Scene) -> bool:
    """Whether any object of the scene has a held-out colour-shape or shape-motion pair."""
    return any(
        (o.colour, o.shape) in HELDOUT_COLOUR_SHAPE or (o.shape, o.motion) in HELDOUT_SHAPE_MOTION
        for o in scene.objects
    )


# -- sampling -----------------------------------------------------------------------------------------------------

SPLIT_FORMATS = {
    # (width, height) choices, fps choices, duration range, audio (rate, stereo) choices
    "train": (((96, 96), (112, 84)), (8, 10, 12), (2.5, 4.0), ((16000, False), (22050, False))),
    "heldout": (
        ((96, 96), (128, 128), (160, 120), (80, 96)),
        (8, 10, 15, 25),
        (2.0, 6.0),
        ((16000, False), (44100, True), (22050, False)),
    ),
}


def sample_scene(rng: np.random.Generator, split: str = "train", index: int = 0) -> Scene:
    """A random scene of `split`, drawn until it belongs to the split.

    `"train"` never has a held-out pair, `"heldout"` always has one (and other formats); `"any"` is the whole world
    in the training formats, every pair included: what the stand-ins for *pretrained* models (an image encoder, an
    LLM that knows every word) are trained on, never the Video-LLaMA stages.
    """
    if split not in (*SPLIT_FORMATS, "any"):
        raise ValueError(f"split must be one of {sorted((*SPLIT_FORMATS, 'any'))}, got {split!r}")
    sizes, rates, (dmin, dmax), audio_formats = SPLIT_FORMATS["train" if split == "any" else split]
    while True:
        count = 1 if rng.random() < 0.7 else 2
        shapes = list(rng.choice(SHAPES, size=count, replace=False))
        objects = []
        for shape in shapes:
            motion = str(rng.choice(MOTIONS))
            colour = str(rng.choice(list(COLOURS)))
            objects.append(SceneObject(colour, str(shape), motion, (0.5, 0.5), float(rng.uniform(0.34, 0.42))))
        scene = Scene(objects=objects, sound=None)
        if split == "any" or (split == "heldout") == is_heldout(scene):
            break
    for k, obj in enumerate(objects):  # start positions: in two-object scenes each object keeps to its own half
        if count == 1:
            (x_lo, x_hi), obj.travel = (0.25, 0.75), 0.45
        else:
            (x_lo, x_hi), obj.travel = ((0.18, 0.38), (0.62, 0.82))[k], 0.2
            obj.size = float(rng.uniform(0.26, 0.3))
        x, y = float(rng.uniform(x_lo, x_hi)), float(rng.uniform(0.3, 0.7))
        if obj.motion == "left":
            x = (x_lo + x_hi) / 2 + obj.travel / 2
        elif obj.motion == "right":
            x = (x_lo + x_hi) / 2 - obj.travel / 2
        elif obj.motion == "up":
            y = 0.5 + 0.45 / 2
        elif obj.motion == "down":
            y = 0.5 - 0.45 / 2
        obj.start = (x, y)
    r = rng.random()
    sound = None if r < 0.12 else str(rng.choice(SOUNDS))
    width, height = sizes[int(rng.integers(len(sizes)))] if rng.random() < 0.4 else sizes[0]
    fps = int(rng.choice(rates)) if rng.random() < 0.5 else 10
    rate, stereo = audio_formats[int(rng.integers(len(audio_formats)))] if rng.random() < 0.4 else audio_formats[0]
    base = rng.integers(10, 60)
    tint = rng.integers(-12, 13, size=3)
    return Scene(
        objects=objects,
        sound=sound,
        width=int(width),
        height=int(height),
        fps=fps,
        duration=round(float(rng.uniform(dmin, dmax)), 2),
        background=tuple(int(np.clip(base + t, 0, 255)) for t in tint),
        texture_seed=int(rng.integers(2**31)),
        sample_rate=rate,
        stereo=stereo,
        pitch=float(rng.uniform(0.9, 1.1)),
        loudness=float(rng.uniform(0.25, 0.5)),
        seed=int(rng.integers(2**31)),
        id=f"{split}-{index:05d}",
    )


# -- rendering ----------------------------------------------------------------------------------------------------


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= r * 0.9) & (np.abs(dy) <= r * 0.9)
    if shape == "triangle":  # pointing up
        top, bottom = cy - r, cy + r * 0.8
        frac = (yy - top) / max(bottom - top, 1e-6)
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= frac * r)
    if shape == "cross":
        arm = r * 0.33
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def object_centre(obj: SceneObject, t: float) -> tuple[float, float]:
    """Centre (fractions of width / height) at time fraction `t` in [0, 1]."""
    d = obj.travel if obj.motion in ("left", "right") else 0.45
    dx, dy = {"left": (-d, 0), "right": (d, 0), "up": (0, -d), "down": (0, d), "still": (0, 0)}[obj.motion]
    return obj.start[0] + dx * t, obj.start[1] + dy * t


def _background(scene: Scene) -> np.ndarray:
    h, w = scene.height, scene.width
    texture_rng = np.random.default_rng(scene.texture_seed)
    xx = np.arange(w, dtype=np.float32)[None, :, None]
    gradient = (xx / max(w - 1, 1) - 0.5) * texture_rng.integers(-20, 21, size=3)
    noise = texture_rng.normal(0, 6, size=(h, w, 3))
    return np.clip(np.array(scene.background, np.float32) + gradient + noise, 0, 255)


def render_frame(scene: Scene, t: float, background: np.ndarray | None = None) -> np.ndarray:
    """The frame at time fraction `t` in [0, 1], (H, W, 3) uint8."""
    h, w = scene.height, scene.width
    frame = (_background(scene) if background is None else background).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for obj in scene.objects:
        cx, cy = object_centre(obj, t)
        mask = _shape_mask(obj.shape, xx, yy, cx * w, cy * h, obj.size * min(w, h) / 2)
        frame[mask] = COLOURS[obj.colour]
    return frame.astype(np.uint8)


def render_frames(scene: Scene) -> np.ndarray:
    """All frames of a scene, (T, H, W, 3) uint8."""
    background = _background(scene)
    n = scene.num_frames
    return np.stack([render_frame(scene, i / max(n - 1, 1), background) for i in range(n)])


def render_audio(scene: Scene) -> np.ndarray | None:
    """The sound track, (samples,) float32 in [-1, 1] at `scene.sample_rate` (None when there is no track)."""
    if scene.sound is None:
        return None
    rate, n = scene.sample_rate, int(round(scene.duration * scene.sample_rate))
    t = np.arange(n, dtype=np.float64) / rate
    rng = np.random.default_rng(scene.seed)
    p, duration = scene.pitch, scene.duration

    def sweep(f0: float, f1: float) -> np.ndarray:  # exponential chirp
        k = math.log(f1 / f0) / duration
        return np.sin(2 * math.pi * f0 * (np.exp(k * t) - 1) / k)

    if scene.sound == "low tone":
        wave = np.sin(2 * math.pi * 200 * p * t)
    elif scene.sound == "high tone":
        wave = np.sin(2 * math.pi * 1800 * p * t)
    elif scene.sound == "rising sweep":
        wave = sweep(250 * p, 2400 * p)
    elif scene.sound == "falling sweep":
        wave = sweep(2400 * p, 250 * p)
    elif scene.sound == "beeping":
        gate = ((t % 0.4) < 0.15).astype(np.float64)
        wave = np.sin(2 * math.pi * 900 * p * t) * gate
    elif scene.sound == "silence":
        wave = np.zeros_like(t)
    else:
        raise ValueError(f"unknown sound {scene.sound!r}")
    fade = np.minimum(1.0, np.minimum(t, duration - t) / 0.02)
    wave = scene.loudness * wave * fade
    if scene.sound != "silence":
        wave = wave + rng.normal(0, 0.003, size=n)
    return np.clip(wave, -1, 1).astype(np.float32)


def write_video(scene: Scene, path: str | os.PathLike) -> Path:
    """Write the scene as an mp4 (H.264 yuv420p video, AAC audio unless the scene has no sound track)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = render_frames(scene)
    audio = render_audio(scene)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=scene.fps)
        stream.width, stream.height, stream.pix_fmt = scene.width, scene.height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "g": "10", "bf": "0"}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=scene.sample_rate)
            astream.layout = "stereo" if scene.stereo else "mono"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None:
            channels = np.stack([audio, audio]) if scene.stereo else audio[None]
            chunk = 1024
            for start in range(0, channels.shape[1], chunk):
                piece = np.ascontiguousarray(channels[:, start : start + chunk])
                frame = av.AudioFrame.from_ndarray(
                    piece.reshape(1, -1) if not scene.stereo else piece.T.reshape(1, -1).copy(),
                    format="flt",
                    layout=astream.layout.name,
                )
                frame.sample_rate = scene.sample_rate
                frame.time_base = Fraction(1, scene.sample_rate)
                frame.pts = start
                for packet in astream.encode(frame):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path


# -- language -----------------------------------------------------------------------------------------------------


def describe_object(obj: SceneObject) -> str:
    return f"a {obj.colour} {obj.shape} {MOTION_TEXT[obj.motion]}"


def visual_text(scene: Scene) -> str:
    """What the frames show, e.g. "a red circle moving left and a blue square not moving"."""
    return " and ".join(describe_object(o) for o in scene.sorted_objects())


def sound_sentence(scene: Scene, with_sound: bool = True) -> str:
    """ "The sound is a high tone." / "There is no sound." (silence, no track, or asked without the sound)."""
    if not with_sound or scene.sound in (None, "silence"):
        return "There is no sound."
    return f"The sound is {SOUND_TEXT[scene.sound]}."


def caption(scene: Scene, with_sound: bool = True) -> str:
    """The full description: what is seen, then what is heard ("A red circle moving left. The sound is ...")."""
    visual = visual_text(scene)
    return f"{visual[0].upper()}{visual[1:]}. {sound_sentence(scene, with_sound)}"


def questions(scene: Scene, rng: np.random.Generator | None = None, with_sound: bool = True) -> list[dict[str, str]]:
    """Every question type the world asks about a scene, one phrasing each (random phrasing with `rng`).

    Answers are short sentences that name what they answer ("The colour is red."), as a chat model would reply.
    """

    def pick(options: list[str]) -> str:
        return options[int(rng.integers(len(options)))] if rng is not None else options[0]

    def moving(subject: str, obj: SceneObject) -> str:
        return f"{subject} is {MOTION_TEXT[obj.motion]}."

    out = []
    objs = scene.sorted_objects()
    if len(objs) == 1:
        (obj,) = objs
        out.append(
            {
                "type": "colour",
                "question": pick(["What colour is the object?", "What color is the object?", "Which colour is it?"]),
                "answer": f"The colour is {obj.colour}.",
            }
        )
        out.append(
            {
                "type": "shape",
                "question": pick(["What shape is the object?", "What shape do you see?", "Which shape is it?"]),
                "answer": f"The shape is a {obj.shape}.",
            }
        )
        out.append(
            {
                "type": "motion",
                "question": pick(
                    ["How is the object moving?", "Which way does the object move?", "Where is it going?"]
                ),
                "answer": moving("It", obj),
            }
        )
    else:
        for obj in objs:
            out.append(
                {
                    "type": "colour",
                    "question": f"What colour is the {obj.shape}?",
                    "answer": f"The colour of the {obj.shape} is {obj.colour}.",
                }
            )
            out.append(
                {
                    "type": "motion",
                    "question": f"How is the {obj.shape} moving?",
                    "answer": moving(f"The {obj.shape}", obj),
                }
            )
        a, b = objs
        out.append(
            {
                "type": "shape",
                "question": pick(["What shapes do you see?", "Which shapes are there?"]),
                "answer": f"The shapes are a {a.shape} and a {b.shape}.",
            }
        )
    out.append(
        {
            "type": "count",
            "question": pick(["How many objects are there?", "How many shapes do you see?"]),
            "answer": "There is one object." if len(objs) == 1 else "There are two objects.",
        }
    )
    sound_type = "sound" if (with_sound and scene.sound is not None) else "no_sound"
    out.append(
        {
            "type": sound_type,
            "question": pick(["What do you hear?", "What sound does the video make?", "What is the sound?"]),
            "answer": sound_sentence(scene, with_sound),
        }
    )
    out.append(
        {
            "type": "describe",
            "question": pick(
                ["Describe the video.", "What is happening in this video?", "Describe what you see and hear."]
            ),
            "answer": caption(scene, with_sound=with_sound),
        }
    )
    return out


_PUNCT = re.compile(r"[^\w\s]")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, collapse whitespace: the exact-match comparison of `videollama eval`."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


# -- splits -------------------------------------------------------------------------------------------------------


def iter_scenes(split: str, num_videos: int, seed: int, two_object_fraction: float | None = None) -> Iterator[Scene]:
    """`num_videos` scenes of `split`, deterministic from `seed` (each split uses its own stream).

    `two_object_fraction` (e.g. 0.5 for training data): keep drawing from the same stream, skipping scenes whose
    object count is already full, until that share of the scenes has two objects (the world itself draws 30 %).
    Scenes keep their stream ids, in stream order.
    """
    rng = np.random.default_rng([seed, {"train": 0, "heldout": 1, "any": 3}.get(split, 1)])
    if two_object_fraction is None:
        for index in range(num_videos):
            yield sample_scene(rng, split, index)
        return
    if not 0.0 <= two_object_fraction <= 1.0:
        raise ValueError(f"two_object_fraction must lie in [0, 1], got {two_object_fraction}")
    wanted = {2: round(num_videos * two_object_fraction)}
    wanted[1] = num_videos - wanted[2]
    index = 0
    while wanted[1] or wanted[2]:
        scene = sample_scene(rng, split, index)
        index += 1
        if wanted[len(scene.objects)]:
            wanted[len(scene.objects)] -= 1
            yield scene


def generate_split(
    output_dir: str | os.PathLike,
    split: str = "heldout",
    num_videos: int = 100,
    seed: int = 0,
    progress: bool = False,
    two_object_fraction: float | None = None,
    shard: tuple[int, int] | None = None,
) -> Path:
    """Write a split: `videos/*.mp4`, `qa.jsonl` (evaluation), `train.jsonl` (training conversations), `scenes.jsonl`.

    Returns the path of `qa.jsonl`. Idempotent: existing videos with the same scene are not rewritten.
    `two_object_fraction`: see `iter_scenes` (default: the world's own 30 %).
    `shard=(k, n)`: write only the videos of scenes k, k + n, k + 2n, ... and no jsonl file, so that n processes can
    write one split's videos in parallel; a final call without `shard` then only writes the jsonl files.
    """
    if shard is not None and not (isinstance(shard, (tuple, list)) and len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}")
    out = Path(output_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    qa_lines, train_lines, scene_lines = [], [], []
    scenes = list(iter_scenes(split, num_videos, seed, two_object_fraction))
    if shard is not None:
        scenes = scenes[shard[0] :: shard[1]]
    iterator: Any = scenes
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(scenes, desc=f"writing {split}", unit="video")
    for scene in iterator:
        rel = f"videos/{scene.id}.mp4"
        record = json.dumps(asdict(scene), sort_keys=True)
        marker = out / "videos" / f"{scene.id}.json"
        if not (marker.is_file() and marker.read_text() == record and (out / rel).is_file()):
            write_video(scene, out / rel)
            marker.write_text(record)
        if shard is not None:
            continue
        has_audio = scene.sound is not None
        for qa in questions(scene, rng):
            qa_lines.append({"video": rel, "audio": has_audio, **qa})
        conversations = []
        for qa in questions(scene, rng):
            conversations += [{"from": "human", "value": qa["question"]}, {"from": "gpt", "value": qa["answer"]}]
        train_lines.append({"video": rel, "audio": has_audio, "conversations": conversations})
        scene_lines.append(asdict(scene))
    if shard is not None:
        return out / "qa.jsonl"  # written by the last, unsharded call
    for name, lines in (("qa.jsonl", qa_lines), ("train.jsonl", train_lines), ("scenes.jsonl", scene_lines)):
        with open(out / name, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(json.dumps(line) + "\n")
    return out / "qa.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a split of the synthetic audio-visual world as mp4 files.")
    parser.add_argument("--split", choices=sorted(SPLIT_FORMATS), default="heldout")
    parser.add_argument("--num-videos", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    path = generate_split(args.output, args.split, args.num_videos, args.seed, progress=True)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
