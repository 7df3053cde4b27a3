"""Audio features: ImageBind fbank clips identical to the original, short/long audio, bad inputs."""

import json

import numpy as np
import pytest
import torch
from _videollama_media import MEDIA, PREPROCESS, write_video
from safetensors.torch import load_file

from transformers_videollama.feature_extraction_videollama import AudioTooShortError, VideoLlamaFeatureExtractor
from transformers_videollama.media_io_videollama import NoAudioTrackError, decode_audio_track


PAD_VALUE = (0 + 4.268) / 9.138  # a zero-padded fbank frame after normalisation


@pytest.fixture(scope="module")
def extractor():
    return VideoLlamaFeatureExtractor()


def test_fbank_matches_the_original(extractor):
    expected = load_file(PREPROCESS / "dog_barking_audio_fbank.safetensors")["audio_fbank"]
    values = extractor(str(MEDIA / "dog_barking.mp4"))["input_values"]
    assert values.shape == (1, 8, 1, 128, 204) and values.dtype == torch.float32
    assert (values - expected).abs().max().item() <= 1e-3
    # Mel bin 3 has no FFT bin (always log(eps)) and the 6 padded frames hold the padding value.
    torch.testing.assert_close(values[0, :, 0, 3, :198], torch.full((8, 198), -1.27756), atol=1e-4, rtol=0)
    torch.testing.assert_close(values[0, :, 0, :, 198:], torch.full((8, 128, 6), PAD_VALUE), atol=1e-6, rtol=0)
    sha = json.loads((PREPROCESS / "dog_barking.json").read_text())["audio"]["audio_fbank"]["sha256_float32_le"]
    import hashlib

    assert hashlib.sha256(values.numpy().tobytes()).hexdigest() == sha  # bit-identical on this stack


def test_array_input_equals_file_input(extractor):
    track = decode_audio_track(MEDIA / "dog_barking.mp4")
    from_file = extractor(str(MEDIA / "dog_barking.mp4"))["input_values"]
    from_array = extractor(track.waveform, sampling_rate=track.sample_rate)["input_values"]
    from_track = extractor([track, track])["input_values"]
    torch.testing.assert_close(from_array, from_file, atol=0, rtol=0)
    assert from_track.shape == (2, 8, 1, 128, 204)
    torch.testing.assert_close(from_track[1], from_file[0], atol=0, rtol=0)


def test_short_audio_gives_eight_identical_padded_clips(extractor, tmp_path):
    # 0.2 s of mono 48 kHz audio (like the original's synthetic_5frames_shortaudio): 19 real fbank frames per clip.
    path = write_video(tmp_path / "short.mp4", num_frames=5, audio_seconds=0.2)
    values = extractor(str(path))["input_values"][0]
    assert values.shape == (8, 1, 128, 204)
    # Same window eight times; each clip re-subtracts the (now ~0) mean in place on the shared buffer, as the
    # original did, so the clips agree to float32 noise only.
    for k in range(1, 8):
        torch.testing.assert_close(values[k], values[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(values[0, 0, :, 30:], torch.full((128, 174), PAD_VALUE), atol=1e-6, rtol=0)


def test_long_track_streaming_path_equals_full_decode(tmp_path):
    path = write_video(tmp_path / "long.mp4", num_frames=2, fps=1, size=(16, 16), audio_seconds=24.0)
    streaming = VideoLlamaFeatureExtractor(max_full_decode_seconds=5.0)(str(path))["input_values"]
    full = VideoLlamaFeatureExtractor(max_full_decode_seconds=None)(str(path))["input_values"]
    torch.testing.assert_close(streaming, full, atol=0, rtol=0)


def test_too_short_audio_is_an_explicit_error(extractor, tmp_path):
    path = write_video(
        tmp_path / "blip.mp4", num_frames=3, audio_seconds=0.005
    )  # 1024 samples at 48 kHz -> 342 at 16 kHz
    with pytest.raises(AudioTooShortError, match=r"blip\.mp4' is too short: 342 samples at 16000 Hz"):
        extractor(str(path))


def test_no_audio_track(extractor):
    with pytest.raises(NoAudioTrackError, match=r"birthday\.mp4' has no audio track"):
        extractor(str(MEDIA / "birthday.mp4"))


@pytest.mark.parametrize(
    "value, error, message",
    [
        (np.zeros(16000, dtype=np.int16), TypeError, r"dtype int16; expected float"),
        (
            np.zeros((1, 2, 100), dtype=np.float32),
            ValueError,
            r"\(samples,\) or \(channels, samples\); got \(1, 2, 100\)",
        ),
        (np.zeros((2, 0), dtype=np.float32), ValueError, r"is empty"),
        (np.full(16000, np.nan, dtype=np.float32), ValueError, r"NaN or infinite"),
        # one bad sample among finite ones, +inf alone and +inf with -inf (the float64-sum check sees all three)
        (np.r_[np.zeros(8000, np.float32), np.float32(np.nan), np.zeros(99, np.float32)], ValueError, r"NaN or inf"),
        (np.r_[np.zeros(100, np.float32), np.float32(np.inf)], ValueError, r"NaN or infinite"),
        (np.array([[np.inf, 0.5], [-np.inf, 0.5]], np.float32).repeat(500, 1), ValueError, r"NaN or infinite"),
        ([], ValueError, r"empty list"),
    ],
)
def test_bad_audio_arrays(extractor, value, error, message):
    with pytest.raises(error, match=message):
        extractor(value, sampling_rate=16000)


def test_huge_finite_samples_are_not_taken_for_infinite(extractor):
    # the finiteness check is one sum, taken in float64 so that it cannot overflow on finite float32 samples
    values = extractor(np.full(16000, 3e38, dtype=np.float32), sampling_rate=16000)["input_values"]
    assert values.shape == (1, 8, 1, 128, 204)


def test_save_and_reload(tmp_path):
    VideoLlamaFeatureExtractor(num_clips=8, max_full_decode_seconds=60.0).save_pretrained(tmp_path)
    loaded = VideoLlamaFeatureExtractor.from_pretrained(tmp_path)
    assert (loaded.mean, loaded.std, loaded.target_length, loaded.feature_size) == (-4.268, 9.138, 204, 128)
    assert loaded.max_full_decode_seconds == 60.0


def test_never_mutates_the_callers_samples():
    """The per-clip mean subtraction is in place; it must run on our own buffer, at any input rate."""
    import numpy as np

    from transformers_videollama import VideoLlamaFeatureExtractor

    extractor = VideoLlamaFeatureExtractor()
    for rate in (16000, 44100):
        samples = (np.random.default_rng(0).standard_normal((2, rate * 3)) * 0.1 + 0.3).astype(np.float32)
        before = samples.copy()
        extractor(samples, sampling_rate=rate)
        assert np.array_equal(samples, before)


@pytest.mark.parametrize("samples", [32000, 4000, 401])
def test_batched_fbank_equals_torchaudio_per_clip(samples):
    # The extractor computes all clips' fbanks in one batched pass and reuses the resampling kernel; both must give
    # torchaudio's per-call values (the original called kaldi.fbank and functional.resample once per clip / file).
    import torchaudio.compliance.kaldi as kaldi
    import torchaudio.functional as taf

    from transformers_videollama.feature_extraction_videollama import _kaldi_fbanks, _resample

    generator = torch.Generator().manual_seed(samples)
    clips = torch.randn(3, samples, generator=generator) * 0.2
    expected = torch.stack(
        [
            kaldi.fbank(
                clip[None],
                htk_compat=True,
                sample_frequency=16000,
                use_energy=False,
                window_type="hanning",
                num_mel_bins=128,
                dither=0.0,
                frame_length=25,
                frame_shift=10,
            )
            for clip in clips
        ]
    )
    torch.testing.assert_close(_kaldi_fbanks(clips, 16000, 128, 25.0, 10.0), expected, atol=1e-5, rtol=0)
    wave = torch.randn(2, samples, generator=generator)
    for rate in (44100, 22050, 48000):
        torch.testing.assert_close(_resample(wave, rate, 16000), taf.resample(wave, rate, 16000), atol=0, rtol=0)
