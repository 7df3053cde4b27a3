"""PyAV decoding helpers: frame numbering, decord-exact resizing, audio decoding, and errors on bad files."""

import hashlib
import io
import json
import multiprocessing
import sys

import av
import numpy as np
import pytest
from _videollama_media import MEDIA, PREPROCESS, write_audio_only, write_empty_video, write_video

from transformers_videollama import media_io_videollama
from transformers_videollama.media_io_videollama import (
    CorruptAudioError,
    MediaDecodeError,
    NoAudioTrackError,
    _open,
    audio_clip_windows,
    decode_audio_track,
    probe_video,
    read_video_frames,
    resampled_length,
    uniform_frame_indices,
)


def _reference(name):
    return json.loads((PREPROCESS / f"{name}.json").read_text())


@pytest.mark.parametrize(
    "total, expected",
    [
        (170, [0, 21, 42, 63, 85, 106, 127, 148]),
        (417, [0, 52, 104, 156, 208, 260, 312, 364]),
        (240, [0, 30, 60, 90, 120, 150, 180, 210]),
        (421, [0, 52, 105, 157, 210, 263, 315, 368]),
        (5, [0, 1, 2, 3, 4]),
        (1, [0]),
    ],
)
def test_uniform_indices_match_the_original_rule(total, expected):
    assert uniform_frame_indices(total, 8) == expected


def test_uniform_indices_reject_nonsense():
    with pytest.raises(ValueError, match="0 frames"):
        uniform_frame_indices(0, 8)
    with pytest.raises(ValueError, match="positive"):
        uniform_frame_indices(10, 0)


@pytest.mark.parametrize("name", ["dog_barking", "birthday"])
def test_reference_frames_are_bit_identical_to_decord(name):
    ref = _reference(name)["video"]
    frames, info, indices = read_video_frames(MEDIA / f"{name}.mp4")
    assert info.num_frames == ref["vlen"]
    assert info.fps == ref["avg_fps"]
    assert indices == ref["indices"]
    assert frames.shape == tuple(ref["frames_uint8"]["shape"]) and frames.dtype == np.uint8
    assert hashlib.sha256(frames.tobytes()).hexdigest() == ref["frames_uint8"]["sha256"]


def test_probe_reads_the_packet_table_only():
    info = probe_video(MEDIA / "birthday.mp4")
    assert (info.num_frames, info.fps, info.width, info.height) == (417, 25.0, 596, 336)


def test_bytes_and_file_objects_decode_like_paths():
    path = MEDIA / "dog_barking.mp4"
    expected, _, _ = read_video_frames(path, indices=[0, 100, 169])
    data = path.read_bytes()
    from_bytes, _, _ = read_video_frames(data, indices=[0, 100, 169])
    from_file, _, _ = read_video_frames(io.BytesIO(data), indices=[0, 100, 169])
    np.testing.assert_array_equal(from_bytes, expected)
    np.testing.assert_array_equal(from_file, expected)


def test_seeking_returns_the_same_frames_as_decoding_everything(tmp_path):
    # 40 frames, a keyframe every 4: sampled frames come from several GOPs, some after a seek.
    path = write_video(tmp_path / "gops.mp4", num_frames=40, size=(32, 48))
    indices = [0, 3, 5, 17, 18, 31, 39]
    frames, info, _ = read_video_frames(path, indices=indices, size=(32, 48))
    assert info.num_frames == 40
    with av.open(str(path)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for k, i in enumerate(indices):
        np.testing.assert_array_equal(frames[k], every[i])


def test_reused_resize_graphs_give_the_frames_of_fresh_ones(tmp_path, monkeypatch):
    # Graphs are kept per thread and reused across videos: interleaving sources of different sizes, output sizes
    # and a reference clip must give exactly what a freshly built graph gives, and the cache must stay bounded.
    a = write_video(tmp_path / "a.mp4", num_frames=6, size=(32, 48))
    b = write_video(tmp_path / "b.mp4", num_frames=6, size=(40, 40))
    calls = [(a, (32, 48)), (b, (24, 24)), (MEDIA / "dog_barking.mp4", (224, 224)), (a, (24, 24)), (b, (24, 24))]

    def fresh(path, size):
        media_io_videollama._GRAPHS.graphs = {}
        return read_video_frames(path, size=size)[0]

    expected = [fresh(path, size) for path, size in calls]
    media_io_videollama._GRAPHS.graphs = {}
    monkeypatch.setattr(media_io_videollama, "_MAX_GRAPHS", 2)  # also exercise eviction
    for _ in range(2):
        for (path, size), want in zip(calls, expected):
            np.testing.assert_array_equal(read_video_frames(path, size=size)[0], want)
            assert len(media_io_videollama._GRAPHS.graphs) <= 2
    ref = _reference("dog_barking")["video"]["frames_uint8"]["sha256"]
    assert hashlib.sha256(read_video_frames(MEDIA / "dog_barking.mp4")[0].tobytes()).hexdigest() == ref


def _decode_in_worker(path):
    return read_video_frames(path, size=(24, 24))[0]


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_forked_workers_do_not_use_the_parents_graphs(tmp_path):
    # DataLoader workers are forked after the parent has decoded (e.g. the training recipe's first videos): a graph
    # inherited through fork hung the child on its first frame. The child must build its own and decode the same.
    path = write_video(tmp_path / "a.mp4", num_frames=6, size=(32, 48))
    expected = _decode_in_worker(path)  # the parent now holds a graph for this key
    assert media_io_videollama._GRAPHS.graphs
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        frames = pool.apply_async(_decode_in_worker, (path,)).get(timeout=60)
    np.testing.assert_array_equal(frames, expected)


def test_fps_sampling_and_short_videos(tmp_path):
    path = write_video(tmp_path / "five.mp4", num_frames=5)
    frames, info, indices = read_video_frames(path)
    assert indices == [0, 1, 2, 3, 4] and frames.shape[0] == 5
    _, _, by_fps = read_video_frames(MEDIA / "birthday.mp4", fps=0.5)  # 16.68 s -> 8 frames
    assert by_fps == uniform_frame_indices(417, 8)


def test_out_of_range_indices_are_rejected():
    with pytest.raises(ValueError, match=r"\[170\] are out of range .*170 frames"):
        read_video_frames(MEDIA / "dog_barking.mp4", indices=[0, 170])


def test_audio_track_is_decoded_at_native_rate_with_all_channels():
    track = decode_audio_track(MEDIA / "dog_barking.mp4")
    assert track.waveform.shape == (2, 317440) and track.waveform.dtype == np.float32
    assert track.sample_rate == 44100
    assert resampled_length(317440, 44100, 16000) == 115171


def _plain_pyav_decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray() for frame in container.decode(stream)]
        return np.concatenate(frames, axis=1).astype(np.float32), stream.codec_context.sample_rate


def test_audio_decoding_equals_a_plain_pyav_decode(tmp_path):
    # The reader opens audio-only (video frames are not decoded while probing) and collects the samples in an
    # FFmpeg FIFO; neither may change a sample. s16 WAV frames are converted to float planes first.
    expected, rate = _plain_pyav_decode(MEDIA / "dog_barking.mp4")
    track = decode_audio_track(MEDIA / "dog_barking.mp4")
    assert track.sample_rate == rate == 44100 and track.native_channels == 2
    np.testing.assert_array_equal(track.waveform, expected)
    wav = write_audio_only(tmp_path / "tone.wav", seconds=0.7, rate=22050)
    track = decode_audio_track(wav)
    samples, _ = _plain_pyav_decode(wav)
    assert track.sample_rate == 22050 and track.waveform.shape == (1, 15434)
    np.testing.assert_allclose(track.waveform, samples / 32768.0, rtol=0, atol=0)


def test_audio_only_open_still_knows_the_audio_format():
    container, _ = _open(MEDIA / "dog_barking.mp4", audio_only=True)
    with container:
        audio = container.streams.audio[0].codec_context
        assert (audio.sample_rate, audio.channels, audio.format.name) == (44100, 2, "fltp")
        assert container.streams.video[0].codec_context.width == 854  # from the container header, not a decode


def _adts(rate, layout, seconds=0.5):
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="adts") as container:
        stream = container.add_stream("aac", rate=rate, layout=layout)
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(
            np.repeat(wave, 2 if layout == "stereo" else 1, 0), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buffer.getvalue()


def test_audio_whose_format_changes_mid_stream_is_a_clear_error(tmp_path):
    # Two ADTS streams back to back: 16 kHz mono, then 44.1 kHz stereo. Concatenating their samples would mix
    # rates and channels; the reader says what changed and where.
    path = tmp_path / "joined.aac"
    path.write_bytes(_adts(16000, "mono") + _adts(44100, "stereo"))
    with pytest.raises(
        CorruptAudioError,
        match=r"joined\.aac' changes its format after \d+ frames \(16000 Hz mono -> 44100 Hz stereo\)",
    ):
        decode_audio_track(path)


def test_clip_windows_match_pytorchvideo():
    ref = _reference("dog_barking")["audio"]
    expected = [(c["sample_start"], c["sample_end"]) for c in ref["clips"]]
    assert audio_clip_windows(115171, 16000, 2.0, 8) == expected
    # Shorter than one clip: all eight clips are the same [0, 2 s) window.
    assert audio_clip_windows(3414, 16000, 2.0, 8) == [(0, 32000)] * 8


# --- bad inputs: every error names the input and the reason ---------------------------------------------------


def _bad_files(tmp_path):
    data = (MEDIA / "dog_barking.mp4").read_bytes()
    (tmp_path / "text.mp4").write_text("hello, I am not a video")
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.mp4").write_bytes(b"")
    return tmp_path


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda d: d / "missing.mp4", FileNotFoundError, r"'.*missing\.mp4' does not exist"),
        (lambda d: d, IsADirectoryError, r"is a directory"),
        (lambda d: _bad_files(d) / "text.mp4", MediaDecodeError, r"text\.mp4' is not a readable media file"),
        (lambda d: _bad_files(d) / "empty.mp4", MediaDecodeError, r"empty\.mp4' is empty"),
        (lambda d: _bad_files(d) / "truncated.mp4", MediaDecodeError, r"truncated\.mp4' is truncated: .*170 frames"),
        (lambda d: write_audio_only(d / "speech.wav"), MediaDecodeError, r"speech\.wav' has no video stream"),
        (lambda d: write_empty_video(d / "nothing.avi"), MediaDecodeError, r"nothing\.avi' has zero frames"),
        (lambda d: b"", MediaDecodeError, r"<0 bytes in memory> is empty"),
        (lambda d: b"\x00" * 1000, MediaDecodeError, r"<1000 bytes in memory> is not a readable media file"),
    ],
)
def test_bad_video_inputs_raise_clear_errors(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        read_video_frames(make(tmp_path))


def test_missing_audio_track_is_reported():
    with pytest.raises(NoAudioTrackError, match=r"birthday\.mp4' has no audio track"):
        decode_audio_track(MEDIA / "birthday.mp4")
