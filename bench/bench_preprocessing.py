#!/usr/bin/env python
# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""Benchmark: time and peak memory to turn a video file into Video-LLaMA model inputs.

Run by hand (not a test):

    python bench/bench_preprocessing.py                 # reference videos + a generated 10 min 720p h264/AAC video
    python bench/bench_preprocessing.py --long-seconds 120 --runs 3
    python bench/bench_preprocessing.py --workdir /tmp/vl-bench   # keep (and reuse) the generated long video

For every video it measures, each in a fresh subprocess (so peak RSS belongs to that measurement only), after one
warm-up run, the median and min over `--runs` runs of:

* `inputs`   - ours: 8 sampled frames -> `pixel_values_videos` and 8 audio clips -> `input_values`;
* `video`    - ours, video only;  `audio` - ours, audio only;
* `baseline` - decoding every frame of the video stream with PyAV (threads on), nothing else: the floor of any
  decode-everything pipeline (decord's `get_batch` and the original demo decoded every frame up to the last sample).

Then, for many small videos in a row (`--world-clips` clips of the synthetic world, 96x96, as the bundled model's
training and `videollama describe` read them), the median per-clip time of loading 8 frames, with the FFmpeg resize
graphs kept between videos (`clips`, what the package does) and rebuilt for every video (`clips-fresh`, baseline).

Peak memory is the child's `ru_maxrss` minus that of a child that only imports the same modules. The original
pipeline's numbers (decord + its transforms, measured on the reference machine, 2 vCPU) are printed for orientation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT / "tests" / "fixtures" / "media"
# Original pipeline on the reference machine (median ms, from the reference data's index.json): video total, audio.
ORIGINAL_MS = {"dog_barking.mp4": (135.2, 21.2), "birthday.mp4": (221.0, None)}


# ----------------------------------------------------------------------------------------------------------------
# Child process: one kind of measurement on one file
# ----------------------------------------------------------------------------------------------------------------


def _child(mode: str, path: str, runs: int) -> None:
    import av
    import torch  # noqa: F401 - imported in every mode so the memory baseline is comparable

    from transformers_videollama.feature_extraction_videollama import VideoLlamaFeatureExtractor
    from transformers_videollama.video_processing_videollama import VideoLlamaVideoProcessor

    video_processor = VideoLlamaVideoProcessor()
    feature_extractor = VideoLlamaFeatureExtractor()

    def video() -> None:
        video_processor.batch([video_processor.load(path)])

    def audio() -> None:
        with contextlib.suppress(ValueError):  # no audio track: the processor falls back to the video-only prompt
            feature_extractor(path)

    def inputs() -> None:
        video()
        audio()

    def baseline() -> None:
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for _ in container.decode(stream):
                pass

    def noop() -> None:
        pass

    if mode in ("clips", "clips-fresh"):  # `path` is a folder of small videos: per-clip times, one pass each run
        from transformers_videollama import media_io_videollama

        clips = sorted(Path(path).glob("*.mp4"))
        times = []
        for run in range(runs + 1):  # the first pass is the warm-up
            for clip in clips:
                start = time.perf_counter()
                if mode == "clips-fresh":
                    media_io_videollama._GRAPHS.graphs = {}
                video_processor.load(str(clip))
                if run:
                    times.append(time.perf_counter() - start)
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"times": times, "rss_mib": rss_kib / 1024}))
        return
    work = {"inputs": inputs, "video": video, "audio": audio, "baseline": baseline, "noop": noop}[mode]
    work()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"times": times, "rss_mib": rss_kib / 1024}))


def _measure(mode: str, path: Path, runs: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path), "--runs", str(runs)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["median_ms"] = statistics.median(result["times"]) * 1000
    result["min_ms"] = min(result["times"]) * 1000
    return result


# ----------------------------------------------------------------------------------------------------------------
# The long test video
# ----------------------------------------------------------------------------------------------------------------


def make_long_video(path: Path, seconds: int, width: int = 1280, height: int = 720, fps: int = 25) -> None:
    """An h264 (x264 veryfast, B-frames, keyint 250) + stereo 44.1 kHz AAC MP4 of `seconds` seconds.

    To keep generation fast, 60 s of moving texture are encoded once and the packets repeated with shifted timestamps;
    the audio (a tone plus noise) is encoded for the full length. Both are interleaved by time, like a real file.
    """
    import av
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        clip_seconds = min(60, seconds)
        clip = Path(tmp) / "clip.mp4"
        rng = np.random.default_rng(0)
        texture = np.kron(
            rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8)
        )
        with av.open(str(clip), "w") as out:
            stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "28"})
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(clip_seconds * fps):
                image = np.roll(np.roll(texture, (i * 3) % height, axis=0), (i * 5) % width, axis=1)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        sound = Path(tmp) / "audio.m4a"
        with av.open(str(sound), "w") as out:
            stream = out.add_stream("aac", rate=44100, layout="stereo")
            chunk = 44100
            for start in range(0, seconds * 44100, chunk):
                t = np.arange(start, start + chunk) / 44100.0
                tone = 0.3 * np.sin(2 * np.pi * (220 + 20 * (start // chunk % 10)) * t)
                samples = np.stack([tone, 0.5 * tone]) + 0.02 * rng.standard_normal((2, chunk))
                frame = av.AudioFrame.from_ndarray(samples.astype(np.float32), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = 44100, start
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        with av.open(str(clip)) as vin, av.open(str(sound)) as ain, av.open(str(path), "w") as out:
            vstream, astream = vin.streams.video[0], ain.streams.audio[0]
            vout, aout = out.add_stream_from_template(vstream), out.add_stream_from_template(astream)
            dts = [p.dts for p in vin.demux(vstream) if p.dts is not None]
            step = int(np.bincount(np.diff(dts)[np.diff(dts) > 0]).argmax())
            span = step * len(dts)
            repeats = -(-seconds // clip_seconds)

            def video_packets():
                for k in range(repeats):
                    vin.seek(0)
                    for p in vin.demux(vstream):
                        if p.dts is None:
                            continue
                        p.pts += k * span
                        p.dts += k * span
                        if float(p.dts * vstream.time_base) >= seconds:
                            return
                        yield p

            def audio_packets():
                for p in ain.demux(astream):
                    if p.dts is not None:
                        yield p

            pending_a = audio_packets()
            a = next(pending_a, None)
            for v in video_packets():
                while a is not None and a.dts * astream.time_base <= v.dts * vstream.time_base:
                    a.stream = aout
                    out.mux(a)
                    a = next(pending_a, None)
                v.stream = vout
                out.mux(v)
            while a is not None:
                a.stream = aout
                out.mux(a)
                a = next(pending_a, None)


# ----------------------------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement (after one warm-up)")
    parser.add_argument("--baseline-runs", type=int, default=None, help="timed runs of the baseline on the long video")
    parser.add_argument("--long-seconds", type=int, default=600, help="length of the generated video (0: skip it)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated video here and reuse it")
    parser.add_argument("--world-clips", type=int, default=40, help="small world videos decoded in a row (0: skip)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.runs)
        return

    videos = [MEDIA / "dog_barking.mp4", MEDIA / "birthday.mp4"]
    tmp = None
    if args.long_seconds:
        workdir = args.workdir or Path(tmp := tempfile.mkdtemp(prefix="videollama-bench-"))
        workdir.mkdir(parents=True, exist_ok=True)
        long_path = workdir / f"long_{args.long_seconds}s_720p.mp4"
        if not long_path.exists():
            start = time.perf_counter()
            make_long_video(long_path, args.long_seconds)
            print(
                f"generated {long_path} ({long_path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - start:.0f} s"
            )
        videos.append(long_path)

    noop = _measure("noop", videos[0], 1)["rss_mib"]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"import-only peak RSS {noop:.0f} MiB (subtracted below)\n")
    header = f"{'video':28s} {'mode':9s} {'median ms':>10s} {'min ms':>9s} {'peak MiB':>9s}"
    print(header)
    print("-" * len(header))
    summary = {}
    for path in videos:
        rows = {}
        for mode in ("inputs", "video", "audio", "baseline"):
            runs = args.runs
            if mode == "baseline" and path.name.startswith("long_"):
                runs = args.baseline_runs or max(1, min(args.runs, 2))
            rows[mode] = result = _measure(mode, path, runs)
            print(
                f"{path.name:28s} {mode:9s} {result['median_ms']:10.1f} {result['min_ms']:9.1f} "
                f"{result['rss_mib'] - noop:9.1f}"
            )
        ratio = rows["baseline"]["median_ms"] / rows["inputs"]["median_ms"]
        print(
            f"{path.name:28s} speed-up of model inputs (8 frames + 8 audio clips) vs decode-everything: {ratio:.1f}x"
        )
        if path.name in ORIGINAL_MS:
            video_ms, audio_ms = ORIGINAL_MS[path.name]
            audio_text = f", audio {audio_ms} ms" if audio_ms else ""
            print(f"{'':28s} original pipeline (reference machine): video {video_ms} ms{audio_text}")
        print()
        summary[path.name] = {
            m: {"median_ms": r["median_ms"], "peak_mib": r["rss_mib"] - noop} for m, r in rows.items()
        }
        summary[path.name]["speedup_vs_baseline"] = ratio
    if args.world_clips:
        from transformers_videollama import world_videollama

        folder = Path(tempfile.mkdtemp(prefix="videollama-bench-clips-"))
        world_videollama.generate_split(folder, "train", args.world_clips, seed=0)
        rows = {mode: _measure(mode, folder / "videos", args.runs) for mode in ("clips", "clips-fresh")}
        for mode, result in rows.items():
            print(f"{args.world_clips} world clips      {mode:11s} {result['median_ms']:8.1f} ms per clip (median)")
        ratio = rows["clips-fresh"]["median_ms"] / rows["clips"]["median_ms"]
        print(f"{'':28s} graphs kept between videos vs rebuilt per video: {ratio:.2f}x")
        summary["world_clips"] = {m: r["median_ms"] for m, r in rows.items()} | {"speedup": ratio}
        shutil.rmtree(folder)
    print(json.dumps(summary, indent=1))
    if tmp and not args.workdir:
        for child in Path(tmp).iterdir():
            child.unlink()
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
