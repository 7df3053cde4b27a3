"""Tiny synthetic media for the Video-LLaMA processor tests, written with PyAV (no system FFmpeg needed)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


FIXTURES = Path(__file__).parent / "fixtures"
MEDIA = FIXTURES / "media"
PREPROCESS = FIXTURES / "preprocess"
LLAMA = FIXTURES / "reference" / "llama"


def write_video(
    path: Path,
    num_frames: int = 5,
    fps: int = 25,
    size: tuple[int, int] = (48, 64),
    audio_seconds: float | None = None,
    audio_rate: int = 48000,
    codec: str = "libx264",
) -> Path:
    """A small video whose frame i is a flat colour encoding i (so frame order is checkable), optional sine audio."""
    height, width = size
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            video.options = {"preset": "ultrafast", "g": "4"}
        audio = None
        if audio_seconds is not None:
            audio = container.add_stream("aac", rate=audio_rate, layout="mono")
        for i in range(num_frames):
            image = np.full((height, width, 3), (i * 37) % 256, dtype=np.uint8)
            image[..., 1] = (i * 11) % 256
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio is not None:
            n = int(round(audio_seconds * audio_rate))
            t = np.arange(n) / audio_rate
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = audio_rate
            frame.pts = 0
            for packet in audio.encode(frame):
                container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


def write_audio_only(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """A WAV file (no video stream)."""
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        n = int(seconds * rate)
        samples = (np.sin(np.arange(n) / 10) * 8000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_empty_video(path: Path) -> Path:
    """An AVI with a video stream but no frames (MP4 and MKV writers drop or break empty streams)."""
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    return path
