"""Video/image processor: pixel values identical to the original, sampling options, batching, bad inputs."""

import hashlib
import json

import numpy as np
import PIL.Image
import pytest
import torch
from _videollama_media import MEDIA, PREPROCESS, write_video

from transformers_videollama.video_processing_videollama import VideoLlamaVideoProcessor, frames_message


@pytest.fixture(scope="module")
def processor():
    return VideoLlamaVideoProcessor()


def _reference(name):
    return json.loads((PREPROCESS / f"{name}.json").read_text())


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.mark.parametrize("name", ["dog_barking", "birthday"])
def test_video_pixel_values_equal_the_original(processor, name):
    ref = _reference(name)["video"]
    out = processor(str(MEDIA / f"{name}.mp4"))
    pixels = out["pixel_values_videos"]
    assert pixels.shape == (1, 8, 3, 224, 224) and pixels.dtype == torch.float32
    assert out["video_frames_mask"].tolist() == [[1] * 8]
    # The original's layout is (B, C, T, H, W); the stored sha256 is of those float32 bytes.
    original_layout = pixels.permute(0, 2, 1, 3, 4).numpy()
    assert _sha(original_layout) == ref["pixel_values"]["sha256_float32_le"]
    assert abs(float(original_layout.astype(np.float64).sum()) - ref["pixel_values"]["stats"]["sum"]) < 1e-2


def test_timestamp_message_is_the_original_string(processor):
    for name in ("dog_barking", "birthday"):
        decoded = processor.load(MEDIA / f"{name}.mp4")
        assert frames_message(decoded.metadata) == _reference(name)["video"]["msg"]
    # round(., 1) and str(float): 0.04 -> 0.0, 0.08 -> 0.1, 0.12 -> 0.1, 0.16 -> 0.2 (values from the notes).
    from transformers.video_utils import VideoMetadata

    meta = VideoMetadata(total_num_frames=5, fps=25.0, frames_indices=[0, 1, 2, 3, 4])
    assert frames_message(meta) == "The video contains 5 frames sampled at 0.0, 0.0, 0.1, 0.1, 0.2 seconds. "


def test_image_is_a_one_frame_video_resized_with_pil_bicubic(processor):
    ref = _reference("dog")["image"]
    decoded = processor.load(MEDIA / "dog.jpg")
    assert decoded.kind == "image"
    assert _sha(decoded.frames[0]) == ref["image_resized_uint8"]["sha256"]
    out = processor(str(MEDIA / "dog.jpg"))
    assert out["pixel_values_videos"].shape == (1, 1, 3, 224, 224)
    assert _sha(out["pixel_values_videos"].permute(0, 2, 1, 3, 4).numpy()) == ref["pixel_values"]["sha256_float32_le"]
    # The same image given as PIL object or as bytes.
    with PIL.Image.open(MEDIA / "dog.jpg") as image:
        from_pil = processor.load(image)
    np.testing.assert_array_equal(from_pil.frames, decoded.frames)
    np.testing.assert_array_equal(processor.load((MEDIA / "dog.jpg").read_bytes()).frames, decoded.frames)


def test_num_frames_and_fps_options(processor):
    decoded = processor.load(MEDIA / "birthday.mp4", num_frames=4)
    assert decoded.metadata.frames_indices == [0, 104, 208, 312]
    assert frames_message(decoded.metadata) == "The video contains 4 frames sampled at 0.0, 4.2, 8.3, 12.5 seconds. "
    by_fps = processor.load(MEDIA / "dog_barking.mp4", fps=1.0)  # 7.08 s -> 7 frames
    assert by_fps.metadata.frames_indices == [0, 24, 48, 72, 97, 121, 145]
    assert by_fps.frames.shape == (7, 224, 224, 3)


def test_videos_with_different_lengths_are_padded_with_a_mask(processor, tmp_path):
    short = write_video(tmp_path / "five.mp4", num_frames=5)
    out = processor([str(short), str(MEDIA / "dog_barking.mp4"), str(MEDIA / "dog.jpg")])
    assert out["pixel_values_videos"].shape == (3, 8, 3, 224, 224)
    assert out["video_frames_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 8, [1] + [0] * 7]
    assert out["pixel_values_videos"][0, 5:].abs().sum() == 0


def test_frame_arrays_and_tensors(processor):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(10, 60, 80, 3), dtype=np.uint8)
    thwc = processor.load(frames)
    assert thwc.metadata.frames_indices == [0, 1, 2, 3, 5, 6, 7, 8]
    assert thwc.frames.shape == (8, 224, 224, 3)
    tchw = processor.load(torch.from_numpy(frames).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(tchw.frames, thwc.frames)
    already_sized = rng.integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(processor.load(already_sized).frames, already_sized)
    # one FFmpeg scale graph serves all frames of an array; it must give what a fresh graph per frame gives
    from transformers_videollama.media_io_videollama import resize_rgb_frames

    one_by_one = np.concatenate([resize_rgb_frames(frames[i : i + 1], 224, 224) for i in (0, 1, 2, 3, 5, 6, 7, 8)])
    np.testing.assert_array_equal(thwc.frames, one_by_one)


@pytest.mark.parametrize(
    "value, error, message",
    [
        (np.zeros((0, 224, 224, 3), np.uint8), ValueError, r"Video array is empty \(shape \(0, 224, 224, 3\)\)"),
        (np.zeros((2, 16, 16, 3), np.float32), TypeError, r"dtype float32; expected uint8"),
        (np.zeros((16, 16), np.uint8), ValueError, r"shape \(T, H, W, 3\) or \(T, 3, H, W\); got \(16, 16\)"),
        (np.zeros((2, 16, 16, 4), np.uint8), ValueError, r"3 RGB channels; got shape \(2, 16, 16, 4\)"),
        (np.zeros((16, 16, 4), np.uint8), ValueError, r"\(H, W, 3\); got \(16, 16, 4\)"),
        ([], ValueError, r"empty list"),
        (3.5, TypeError, r"Cannot use <float object> as a video"),
    ],
)
def test_bad_arrays_raise_clear_errors(processor, value, error, message):
    with pytest.raises(error, match=message):
        processor(value)


def test_missing_file_is_named(processor, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.mp4' does not exist"):
        processor([str(MEDIA / "dog.jpg"), str(tmp_path / "nope.mp4")])


def test_save_and_reload(processor, tmp_path):
    custom = VideoLlamaVideoProcessor(num_frames=4)
    custom.save_pretrained(tmp_path)
    loaded = VideoLlamaVideoProcessor.from_pretrained(tmp_path)
    assert loaded.num_frames == 4 and loaded.size == {"height": 224, "width": 224}
    assert loaded.image_mean == processor.image_mean and loaded.video_interpolation == "bilinear"
