# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""Audio features for Video-LLaMA's audio branch (ImageBind-huge audio encoder).

This reproduces ImageBind's `load_and_transform_audio_data(paths, clips_per_video=8)` exactly as Video-LLaMA's
`Chat.upload_video` called it, including the details a reimplementation usually gets wrong:

1. decode all channels at the native rate, then `torchaudio.functional.resample(..., 16000)` (windowed sinc,
   the >= 0.13 kernel) on the whole track;
2. 8 clips of 2 s placed by pytorchvideo's `ConstantClipsPerVideoSampler`: clip `k` starts at `k * (D - 2) / 8`
   (exact `Fraction` arithmetic, `D` from the *resampled* length), so the last `(D - 2) / 8` seconds are unused and
   clips overlap when `D < 18 s`;
3. per clip, **in order and in place on views of the one resampled buffer**: subtract the mean over *both* channels,
   then Kaldi fbank of the **left channel only** (128 mel bins, 25/10 ms, symmetric Hann, `htk_compat`, dither 0).
   Because clips overlap, later clips see samples already shifted by earlier clips' means; doing it on copies
   changes near-silent bins by up to 0.02;
4. pad with zeros (before normalisation) or cut to 204 frames, then `(x - (-4.268)) / 9.138`.

Output: `input_values` of shape `(batch, 8, 1, 128, 204)`, float32.

Long files: the original decoded and resampled the whole track (0.6 GB for 10 minutes of stereo). When the track
is longer than `max_full_decode_seconds` (and 20 s, so clips cannot overlap), it is decoded in one streaming pass that
keeps only the native samples around each clip, and each window is resampled on its own (see `_windowed_clips`).
The sinc resampler only reads a few input samples around each output block, so with a margin the values are
bit-identical to the whole-track ones (tested), and memory no longer grows with the length.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature

from .media_io_videollama import (
    AudioTrack,
    CorruptAudioError,
    NoAudioTrackError,
    audio_clip_windows,
    decode_audio_track,
    decode_open_audio,
    describe_source,
    single_torch_thread,
)


try:
    import torchaudio.compliance.kaldi as _kaldi
    import torchaudio.transforms as _tat
except Exception:  # pragma: no cover - torchaudio missing or broken (e.g. CUDA build mismatch)
    _kaldi = None
    _tat = None


logger = logging.getLogger(__name__)

__all__ = ["AudioTooShortError", "VideoLlamaFeatureExtractor"]

# Kaldi fbank needs at least one 25 ms window: 400 samples at 16 kHz.
_MIN_SAMPLES_16K = 400


class AudioTooShortError(NoAudioTrackError):
    """The audio is shorter than one 25 ms analysis window, so no fbank frame exists (the original failed too)."""


def _require_torchaudio() -> None:
    if _kaldi is None or _tat is None:
        raise ImportError(
            "Video-LLaMA's audio features need torchaudio (resample + Kaldi fbank), and it could not be imported. "
            "Install a torchaudio build that matches your torch."
        )


class VideoLlamaFeatureExtractor(SequenceFeatureExtractor):
    """Turns audio (or the audio track of a video) into ImageBind log-mel clips, exactly as Video-LLaMA did.

    Args:
        feature_size (`int`, defaults to 128): number of mel bins.
        sampling_rate (`int`, defaults to 16000): rate the audio is resampled to.
        padding_value (`float`, defaults to 0.0): fbank value used to pad short clips (before normalisation).
        num_clips (`int`, defaults to 8): clips per input; ImageBind's audio position embedding has 8 rows.
        clip_duration (`float`, defaults to 2.0): clip length in seconds.
        target_length (`int`, defaults to 204): fbank frames per clip after padding/cropping.
        frame_length (`float`, defaults to 25.0) and frame_shift (`float`, defaults to 10.0): Kaldi window, in ms.
        mean (`float`, defaults to -4.268) and std (`float`, defaults to 9.138): normalisation `(x - mean) / std`.
        max_full_decode_seconds (`float`, defaults to 30.0): tracks longer than this (and than 20 s) are decoded in
            one streaming pass that keeps only the clip windows, instead of resampling the whole track in memory
            (bit-identical values, memory independent of the length). `None` always decodes the whole track.
    """

    model_input_names = ["input_values"]

    def __init__(
        self,
        feature_size: int = 128,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        num_clips: int = 8,
        clip_duration: float = 2.0,
        target_length: int = 204,
        frame_length: float = 25.0,
        frame_shift: float = 10.0,
        mean: float = -4.268,
        std: float = 9.138,
        max_full_decode_seconds: float | None = 30.0,
        **kwargs: Any,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.num_clips = num_clips
        self.clip_duration = clip_duration
        self.target_length = target_length
        self.frame_length = frame_length
        self.frame_shift = frame_shift
        self.mean = mean
        self.std = std
        self.max_full_decode_seconds = max_full_decode_seconds

    # ------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------

    def fetch_audio(self, audio: Any, sampling_rate: int | None = None) -> Any:
        """Decode paths/bytes/file objects to `AudioTrack`s (native rate); arrays and tracks pass through.

        Called by the processor before features are computed, so that a broken file fails before any work is done.
        """
        if isinstance(audio, (list, tuple)) and not _is_number_list(audio):
            return [self.fetch_audio(item, sampling_rate=sampling_rate) for item in audio]
        if _is_media_source(audio):
            return decode_audio_track(audio)
        return audio

    # ------------------------------------------------------------------------------------------------------------
    # Features
    # ------------------------------------------------------------------------------------------------------------

    def __call__(
        self,
        raw_audio: Any,
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Compute `input_values` `(batch, num_clips, 1, feature_size, target_length)`.

        Args:
            raw_audio: one input or a list of inputs. Each is a path / bytes / binary file object (a video or an
                audio file; its best audio track is decoded), an `AudioTrack`, or an array / tensor of shape
                `(samples,)` or `(channels, samples)` in [-1, 1] (channel 0 is the one analysed, as in the original).
            sampling_rate: rate of array inputs. Defaults to `self.sampling_rate`; other rates are resampled.
            return_tensors: `"pt"` (default) or `"np"`.
        """
        items = raw_audio if isinstance(raw_audio, (list, tuple)) and not _is_number_list(raw_audio) else [raw_audio]
        if len(items) == 0:
            raise ValueError("`raw_audio` is an empty list; pass at least one audio input.")
        with single_torch_thread():
            features = [self._features_for(item, sampling_rate) for item in items]
        values = torch.stack(features)
        if return_tensors == "np":
            values = values.numpy()
        elif return_tensors not in (None, "pt"):
            raise ValueError(f"Unsupported return_tensors={return_tensors!r}; use 'pt' or 'np'.")
        return BatchFeature({"input_values": values})

    def _features_for(self, item: Any, sampling_rate: int | None) -> torch.Tensor:
        _require_torchaudio()
        if _is_media_source(item):
            return self._features_from_file(item)
        if isinstance(item, AudioTrack):
            return self._features_from_waveform(item.waveform, item.sample_rate, item.source_name)
        rate = sampling_rate if sampling_rate is not None else self.sampling_rate
        return self._features_from_waveform(item, rate, "the audio array")

    def _features_from_file(self, source: Any) -> torch.Tensor:
        if isinstance(source, (str, os.PathLike)) and self.max_full_decode_seconds is not None:
            clips = _windowed_clips(source, self)
            if clips is not None:
                return clips
        track = decode_audio_track(source)
        return self._features_from_waveform(track.waveform, track.sample_rate, track.source_name)

    def _features_from_waveform(self, waveform: Any, rate: int, name: str) -> torch.Tensor:
        wave = _as_float_tensor(waveform, name)
        if rate != self.sampling_rate:
            wave = _resample(wave, rate, self.sampling_rate)  # a new buffer
        else:
            wave = wave.clone()  # the clips' mean subtraction is in place: never touch the caller's samples
        wave = wave.contiguous()
        if wave.shape[-1] < _MIN_SAMPLES_16K:
            raise AudioTooShortError(
                f"The audio of {name} is too short: {wave.shape[-1]} samples at {self.sampling_rate} Hz, fewer than "
                f"one {self.frame_length:g} ms analysis window ({_MIN_SAMPLES_16K} samples)."
            )
        windows = audio_clip_windows(wave.shape[-1], self.sampling_rate, self.clip_duration, self.num_clips)
        return self._clips_from_buffer(wave, windows, name)

    def _clips_from_buffer(self, buffer: torch.Tensor, windows: Sequence[tuple[int, int]], name: str) -> torch.Tensor:
        """Per-clip fbank on views of `buffer`, mean subtracted in place and in order (as ImageBind did).

        Each clip's left channel is taken right after its own mean subtraction (later, overlapping clips shift the
        shared samples again); the fbanks of all clips are then computed in one batched pass.
        """
        lefts = []
        for start, end in windows:
            view = buffer[:, start:end]
            if view.shape[-1] < _MIN_SAMPLES_16K:
                raise AudioTooShortError(f"An audio clip of {name} has only {view.shape[-1]} samples.")
            view -= view.mean()
            lefts.append(view[0].clone())
        return self._melspecs(lefts)

    def _melspecs(self, clips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Normalised fbanks `(len(clips), 1, feature_size, target_length)` of 1-D clips.

        One clip at a time: a clip's frames (~0.3 MB) stay in cache, all clips' frames at once do not (batching them
        was 2x slower here).
        """
        banks = [
            _kaldi_fbanks(clip[None], self.sampling_rate, self.feature_size, self.frame_length, self.frame_shift)[0]
            for clip in clips
        ]
        return torch.stack([self._pad_and_normalise(bank.transpose(0, 1)) for bank in banks])

    def _pad_and_normalise(self, fbank: torch.Tensor) -> torch.Tensor:
        n_frames = fbank.shape[1]
        if n_frames < self.target_length:
            if abs(self.target_length - n_frames) / n_frames > 0.2:
                logger.info(
                    "Audio clip has %d fbank frames, padded to %d (the audio is shorter than %g s).",
                    n_frames,
                    self.target_length,
                    self.clip_duration,
                )
            fbank = torch.nn.functional.pad(fbank, (0, self.target_length - n_frames), value=self.padding_value)
        else:
            fbank = fbank[:, : self.target_length]
        return ((fbank - self.mean) / self.std).unsqueeze(0)


@functools.lru_cache(maxsize=16)
def _resampler(orig_freq: int, new_freq: int) -> Any:
    """`torchaudio.functional.resample`'s sinc kernel, built once per rate pair (building it costs more than using
    it on a few seconds of audio); same kernel, same convolution, same values."""
    return _tat.Resample(orig_freq, new_freq, dtype=torch.float32)


def _resample(wave: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    return _resampler(int(orig_freq), int(new_freq))(wave)


@functools.lru_cache(maxsize=8)
def _mel_matrix(num_mel_bins: int, padded_window: int, sample_rate: float) -> torch.Tensor:
    """Kaldi mel filterbank `(padded_window // 2 + 1, num_mel_bins)` with fbank's defaults (20 Hz to Nyquist)."""
    banks, _ = _kaldi.get_mel_banks(num_mel_bins, padded_window, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
    return torch.nn.functional.pad(banks, (0, 1)).T.contiguous()


@functools.lru_cache(maxsize=8)
def _hann(window: int) -> torch.Tensor:
    return torch.hann_window(window, periodic=False, dtype=torch.float32)


def _kaldi_fbanks(
    clips: torch.Tensor, sample_rate: int, num_mel_bins: int, frame_length_ms: float, frame_shift_ms: float
) -> torch.Tensor:
    """`torchaudio.compliance.kaldi.fbank(clip, htk_compat=True, use_energy=False, window_type="hanning",
    dither=0.0, ...)` for equal-length clips `(K, samples)` -> `(K, frames, num_mel_bins)`.

    The same steps in the same order (snip-edge framing, per-frame DC removal, 0.97 pre-emphasis with the first
    sample repeated, symmetric Hann window, zero padding to a power of two, |rfft|^2, mel filterbank, log with
    float epsilon floor), with the window and the mel filterbank built once (torchaudio rebuilds both on every
    call). Equal to `kaldi.fbank` within float rounding (the tests check 1e-5; on the reference audio the values
    are bit-identical).
    """
    window = int(sample_rate * frame_length_ms * 0.001)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    padded = 1 << (window - 1).bit_length()
    if clips.shape[-1] < window:
        raise AudioTooShortError(f"An audio clip has {clips.shape[-1]} samples, fewer than one {window}-sample window")
    frames = clips.unfold(-1, window, shift)  # (K, m, window), snip_edges=True
    frames = frames - frames.mean(dim=-1, keepdim=True)
    # pre-emphasis x[j] - 0.97 * x[j-1] with the first sample repeated; multiply, then subtract (as kaldi.fbank:
    # a fused multiply-subtract rounds differently)
    scaled = frames * 0.97
    emphasised = torch.empty_like(frames)
    torch.sub(frames[..., 1:], scaled[..., :-1], out=emphasised[..., 1:])
    torch.sub(frames[..., :1], scaled[..., :1], out=emphasised[..., :1])
    frames = emphasised.mul_(_hann(window))
    spectrum = torch.fft.rfft(frames, n=padded).abs().pow(2.0)  # (K, m, padded // 2 + 1)
    energies = torch.matmul(spectrum, _mel_matrix(num_mel_bins, padded, sample_rate))
    return torch.clamp_min(energies, torch.finfo(torch.float32).eps).log()


def _windowed_clips(path: Any, fe: VideoLlamaFeatureExtractor) -> torch.Tensor | None:
    """Clip features of a media file; long tracks use one streaming decode that keeps only the clip windows.

    Short tracks (up to `fe.max_full_decode_seconds`, and at most 18 s + one clip, where clips may overlap and the
    in-place mean subtraction must run on one shared buffer) and tracks whose timestamps do not count samples
    (`time_base != 1/sample_rate`) are decoded whole from the already opened container. `None` means the streaming
    pass could not establish exact sample positions; the caller then decodes the whole track.

    The decoded length, which fixes the clip positions, is read from the last frames with a second container before
    the pass and checked against the count at the end of the pass (a second pass is made if they differ). The
    track is decoded from the start without seeking, so every sample equals the full decode's; the resampler only
    reads a few input samples around each output block, so resampling a window with a margin of a few blocks gives
    the whole-track values (checked bit for bit in the tests).
    """
    from fractions import Fraction

    from .media_io_videollama import _open, av  # local: only this long-file path needs the container internals

    container, name = _open(path, audio_only=True)
    with container:
        if not container.streams.audio:
            raise NoAudioTrackError(f"Media input {name} has no audio track.")
        stream = container.streams.best("audio") or container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        entries = stream.index_entries
        if not rate or not entries or len(entries) < 8 or stream.time_base != Fraction(1, rate):
            track = decode_open_audio(container, name)  # no sample-exact timestamps: decode it whole
            return fe._features_from_waveform(track.waveform, track.sample_rate, track.source_name)
        first_ts, last_ts = entries[0].timestamp, entries[len(entries) - 1].timestamp
        if (last_ts - first_ts) / rate <= max(fe.max_full_decode_seconds, 18.0 + fe.clip_duration):
            # Short track: decode it whole from the container that is already open.
            track = decode_open_audio(container, name)
            return fe._features_from_waveform(track.waveform, track.sample_rate, track.source_name)
        try:
            estimate = _probe_decoded_end(path, stream.index, last_ts)
        except av.error.FFmpegError:
            estimate = None
    if estimate is None:
        return None
    g = math.gcd(rate, fe.sampling_rate)
    orig, new = rate // g, fe.sampling_rate // g
    for _attempt in range(2):
        end_pts = estimate
        spans = _native_windows(end_pts, rate, orig, new, fe)
        if spans is None:
            return None
        collected, origin, total = _stream_windows(path, spans, name)
        if origin is None:
            return None
        if total != end_pts - origin:
            estimate = origin + total  # the pass counted the real length: redo it with the right windows
            continue
        clips = []
        for (start16, end16, block0, in0, in1), seg in zip(spans[1], collected):
            res = _resample(torch.from_numpy(seg), rate, fe.sampling_rate)
            offset = block0 * new
            local = res[:, start16 - offset : end16 - offset].contiguous()
            if local.shape[-1] != end16 - start16:
                return None
            local -= local.mean()
            clips.append(local[0])
        return fe._melspecs(clips)
    return None


def _probe_decoded_end(path: Any, stream_index: int, last_ts: int) -> int | None:
    """Timestamp just past the last decoded sample of the stream (decodes only the last packets)."""
    from .media_io_videollama import _open

    container, _ = _open(path, audio_only=True)
    with container:
        stream = container.streams[stream_index]
        container.seek(last_ts - 8 * (stream.codec_context.frame_size or 1024), stream=stream, backward=True)
        end = None
        for frame in container.decode(stream):
            if frame.pts is None:
                return None
            end = frame.pts + frame.samples
        return end


def _native_windows(end_pts: int, rate: int, orig: int, new: int, fe: VideoLlamaFeatureExtractor):
    """Clip windows at 16 kHz and the native sample ranges needed to resample them (relative to the origin)."""
    # The origin (first decoded pts) is 0 for virtually all files; it is checked by `_stream_windows`.
    total = end_pts
    length16 = math.ceil(total * fe.sampling_rate / rate)
    windows = audio_clip_windows(length16, fe.sampling_rate, fe.clip_duration, fe.num_clips)
    # torchaudio's sinc kernel reaches `width = ceil(6 * orig / (min(orig, new) * 0.99))` input samples to each side
    # of a block; keep that many (plus one block and some slack) around every window.
    width = math.ceil(6 * orig / (min(orig, new) * 0.99))
    margin = math.ceil((width + orig) / orig) + 2
    spans = []
    for start16, end16 in windows:
        block0 = max(start16 // new - margin, 0)
        in0 = block0 * orig
        in1 = min((math.ceil(end16 / new) + margin) * orig, total)
        spans.append((start16, end16, block0, in0, in1))
    return total, spans


def _stream_windows(path: Any, spans_info, name: str):
    """Decode the track once from the start, copying only the samples inside the wanted native ranges."""
    from .media_io_videollama import _open, av

    total_expected, spans = spans_info
    container, _ = _open(path, audio_only=True)
    buffers: list[list[np.ndarray]] = [[] for _ in spans]
    origin = None
    position = 0
    last_needed = max(in1 for *_, in1 in spans)
    with container:
        stream = container.streams.best("audio") or container.streams.audio[0]
        stream.codec_context.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if origin is None:
                    origin = frame.pts
                if frame.format.name != "fltp":
                    return [], None, 0
                n = frame.samples
                lo, hi = position, position + n
                if any(in0 < hi and lo < in1 for *_, in0, in1 in spans):
                    array = frame.to_ndarray()
                    for k, (*_, in0, in1) in enumerate(spans):
                        if in0 < hi and lo < in1:
                            buffers[k].append(array[:, max(in0 - lo, 0) : min(in1, hi) - lo])
                position = hi
                if position >= last_needed and position >= total_expected:
                    break
            # Count the rest without converting samples, so the true length is known.
            for frame in container.decode(stream):
                position += frame.samples
        except av.error.FFmpegError as error:
            raise CorruptAudioError(f"The audio track of {name} is corrupt ({error}).") from error
    if origin is None:
        return [], None, 0
    collected = [np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32) for chunks in buffers]
    return collected, origin, position


def _is_number_list(value: Sequence) -> bool:
    return len(value) > 0 and isinstance(value[0], (int, float))


def _is_media_source(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(value, "read")


def _as_float_tensor(waveform: Any, name: str) -> torch.Tensor:
    if isinstance(waveform, (list, tuple)):
        waveform = np.asarray(waveform, dtype=np.float32)
    if isinstance(waveform, np.ndarray):
        if not np.issubdtype(waveform.dtype, np.floating):
            raise TypeError(f"Audio array {name} has dtype {waveform.dtype}; expected float samples in [-1, 1].")
        tensor = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))  # a view when already float32
    elif isinstance(waveform, torch.Tensor):
        if not waveform.is_floating_point():
            raise TypeError(f"Audio tensor {name} has dtype {waveform.dtype}; expected float samples in [-1, 1].")
        tensor = waveform.detach().to(torch.float32).cpu()
    else:
        raise TypeError(f"Cannot use {describe_source(waveform)} as audio: expected a path, bytes, array or tensor.")
    if tensor.ndim == 1:
        tensor = tensor[None, :]
    if tensor.ndim != 2:
        raise ValueError(f"Audio {name} must have shape (samples,) or (channels, samples); got {tuple(tensor.shape)}.")
    if tensor.shape[-1] == 0 or tensor.shape[0] == 0:
        raise ValueError(f"Audio {name} is empty (shape {tuple(tensor.shape)}).")
    # one float64 sum instead of an elementwise test: it is finite exactly when every sample is (float32 values
    # cannot overflow a float64 sum)
    if not torch.isfinite(tensor.sum(dtype=torch.float64)):
        raise ValueError(f"Audio {name} contains NaN or infinite samples.")
    return tensor
