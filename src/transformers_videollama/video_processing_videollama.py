# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""Video (and image) processor for Video-LLaMA.

Reproduces what the original demo fed the vision branch, pixel for pixel:

* video: decord-style frame sampling (`floor(i * n_total / 8)`, fewer frames when the video has fewer), frames
  stretched to 224x224 by FFmpeg's bilinear `scale` filter (see `media_io_videollama`), then `/255` and the CLIP
  mean/std normalisation (`AlproVideoEvalProcessor.transform`);
* image: `Image.open(path).convert("RGB")`, PIL bicubic resize to 224x224 (no crop, no EXIF transpose), `/255`,
  CLIP normalisation (`Blip2ImageEvalProcessor`); an image is a video with one frame.

Output: `pixel_values_videos` `(num_videos, T, 3, 224, 224)` float32. When the videos of one call have different
frame counts they are zero-padded to the longest and `video_frames_mask` `(num_videos, T)` marks real frames (it is
always returned).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.video_processing_utils import VideoProcessorMixin
from transformers.video_utils import VideoMetadata

from .media_io_videollama import (
    MediaDecodeError,
    describe_source,
    read_video_frames,
    single_torch_thread,
    uniform_frame_indices,
)


try:
    import PIL.Image
except ImportError:  # pragma: no cover
    PIL = None

try:
    import av
except ImportError:  # pragma: no cover
    av = None


__all__ = ["DecodedVideo", "VideoLlamaVideoProcessor", "frames_message"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DecodedVideo:
    """Sampled, resized uint8 frames `(T, H, W, 3)` of one video or image, with where they came from.

    `kind` is `"video"` or `"image"`; the prompt differs (`<Video>...</Video>` with a timestamp message versus
    `<Image>...</Image>`). `metadata.frames_indices` and `metadata.fps` give the timestamps. (A plain class, not a
    dataclass: transformers turns dataclasses inside chat messages into dicts.)
    """

    def __init__(self, frames: np.ndarray, metadata: VideoMetadata, kind: str = "video", source_name: str = ""):
        self.frames = frames
        self.metadata = metadata
        self.kind = kind
        self.source_name = source_name

    def __repr__(self) -> str:
        return f"DecodedVideo(kind={self.kind!r}, frames={tuple(self.frames.shape)}, source={self.source_name})"


def frames_message(metadata: VideoMetadata) -> str:
    """The original's timestamp sentence, e.g. `"The video contains 8 frames sampled at 0.0, 0.9, ... seconds. "`.

    Python `round(t, 1)` then `str(float)`, joined with `", "`, and one trailing space, exactly as `load_video`
    built it. Timestamps use the average frame rate, as decord did.
    """
    indices = list(metadata.frames_indices)
    fps = float(metadata.fps) if metadata.fps else 0.0
    if fps <= 0:
        raise ValueError("Cannot build the timestamp message: the video has no frame rate.")
    seconds = ", ".join(str(round(i / fps, 1)) for i in indices)
    return f"The video contains {len(indices)} frames sampled at {seconds} seconds. "


class VideoLlamaVideoProcessor(VideoProcessorMixin):
    """Decodes videos/images and normalises them exactly as the original Video-LLaMA demo did.

    Args:
        num_frames (`int`, defaults to 8): frames sampled uniformly per video (the demo hard-coded 8).
        fps (`float`, *optional*): sample about this many frames per second instead of `num_frames`.
        size (`dict`, defaults to `{"height": 224, "width": 224}`): output size; frames are stretched, not cropped.
        image_mean / image_std: CLIP constants.
        video_interpolation (`str`, defaults to `"bilinear"`): swscale flag for video frames (decord's).
        image_resample (`int`, defaults to 3 = PIL bicubic): resampling for still images (BLIP-2's).
    """

    model_input_names = ["pixel_values_videos", "video_frames_mask"]

    def __init__(
        self,
        num_frames: int = 8,
        fps: float | None = None,
        size: dict[str, int] | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        video_interpolation: str = "bilinear",
        image_resample: int = 3,
        do_sample_frames: bool = True,
        **kwargs: Any,
    ):
        kwargs.pop("video_processor_type", None)
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.fps = fps
        self.size = dict(size) if size is not None else {"height": 224, "width": 224}
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.video_interpolation = video_interpolation
        self.image_resample = image_resample
        self.do_sample_frames = do_sample_frames

    # ------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------

    def load(self, video: Any, num_frames: int | None = None, fps: float | None = None) -> DecodedVideo:
        """Decode and sample one video / image into uint8 frames at the output size.

        Accepts a path, bytes or binary file object (video or image file), a `PIL.Image` (1 frame), a list of PIL
        images (the frames of one video), a uint8 array/tensor `(H, W, 3)` (1 frame), `(T, H, W, 3)` or
        `(T, 3, H, W)`, or an already decoded `DecodedVideo` (returned unchanged).
        """
        if isinstance(video, DecodedVideo):
            return video
        num_frames = self.num_frames if num_frames is None else num_frames
        fps = self.fps if fps is None else fps
        height, width = self.size["height"], self.size["width"]
        if isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(video, "read"):
            image = self._try_open_image(video)
            if image is not None:
                return self._from_pil(image, describe_source(video))
            frames, info, indices = read_video_frames(
                video,
                num_frames=num_frames,
                fps=fps,
                size=(height, width),
                interpolation=self.video_interpolation,
            )
            metadata = VideoMetadata(
                total_num_frames=info.num_frames,
                fps=info.fps,
                width=info.width,
                height=info.height,
                duration=info.num_frames / info.fps if info.fps else info.duration,
                video_backend="pyav",
                frames_indices=indices,
            )
            return DecodedVideo(frames=frames, metadata=metadata, kind="video", source_name=describe_source(video))
        if PIL is not None and isinstance(video, PIL.Image.Image):
            return self._from_pil(video, "the PIL image")
        if isinstance(video, (list, tuple)):
            if len(video) == 0:
                raise ValueError("Video given as an empty list of frames.")
            if PIL is not None and all(isinstance(f, PIL.Image.Image) for f in video):
                video = np.stack([np.asarray(f.convert("RGB")) for f in video])
            else:
                video = np.stack([_to_numpy(f, "video frame") for f in video])
        if isinstance(video, (np.ndarray, torch.Tensor)):
            return self._from_array(_to_numpy(video, "video array"), num_frames, fps)
        raise TypeError(
            f"Cannot use {describe_source(video)} as a video: expected a path, bytes, file object, PIL image or a "
            "uint8 array of frames."
        )

    def _try_open_image(self, source: Any) -> Any:
        """Open `source` with PIL if it is an image file (by extension for paths, by content for bytes)."""
        if PIL is None:
            return None
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
                return None
            try:
                with PIL.Image.open(path) as image:
                    return image.convert("RGB")
            except (PIL.UnidentifiedImageError, OSError) as error:
                raise MediaDecodeError(f"Image file {describe_source(source)} could not be read ({error}).") from error
        if isinstance(source, (bytes, bytearray, memoryview)):
            try:
                with PIL.Image.open(io.BytesIO(bytes(source))) as image:
                    return image.convert("RGB")
            except (PIL.UnidentifiedImageError, OSError):
                return None
        return None

    def _from_pil(self, image: Any, name: str) -> DecodedVideo:
        height, width = self.size["height"], self.size["width"]
        resized = image.convert("RGB").resize((width, height), resample=self.image_resample)
        frames = np.asarray(resized, dtype=np.uint8)[None]
        metadata = VideoMetadata(
            total_num_frames=1, fps=None, width=image.width, height=image.height, frames_indices=[0]
        )
        return DecodedVideo(frames=frames, metadata=metadata, kind="image", source_name=name)

    def _from_array(self, array: np.ndarray, num_frames: int | None, fps: float | None) -> DecodedVideo:
        if array.size == 0:
            raise ValueError(f"Video array is empty (shape {array.shape}).")
        if array.dtype != np.uint8:
            raise TypeError(
                f"Video array has dtype {array.dtype}; expected uint8 RGB values in 0..255 "
                "(for floats in [0, 1] use `(x * 255).round().astype(np.uint8)`)."
            )
        if array.ndim == 3:
            if array.shape[-1] != 3:
                raise ValueError(f"Image array must have shape (H, W, 3); got {array.shape}.")
            image = PIL.Image.fromarray(array, mode="RGB")
            return self._from_pil(image, "the image array")
        if array.ndim != 4:
            raise ValueError(f"Video array must have shape (T, H, W, 3) or (T, 3, H, W); got {array.shape}.")
        if array.shape[-1] != 3 and array.shape[1] == 3:
            array = array.transpose(0, 2, 3, 1)
        if array.shape[-1] != 3:
            raise ValueError(f"Video array must have 3 RGB channels; got shape {array.shape}.")
        total = array.shape[0]
        if fps is not None:
            raise ValueError("`fps` sampling needs a frame rate; it is not available for a raw frame array.")
        indices = uniform_frame_indices(total, num_frames or total)
        frames = np.stack([self._resize_frame(array[i]) for i in indices])
        metadata = VideoMetadata(
            total_num_frames=total, fps=None, width=array.shape[2], height=array.shape[1], frames_indices=indices
        )
        return DecodedVideo(frames=frames, metadata=metadata, kind="video", source_name="the video array")

    def _resize_frame(self, frame: np.ndarray) -> np.ndarray:
        """Resize one RGB frame with FFmpeg's scale filter (the same swscale bilinear as the file path)."""
        height, width = self.size["height"], self.size["width"]
        if frame.shape[0] == height and frame.shape[1] == width:
            return np.ascontiguousarray(frame)
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        graph = av.filter.Graph()
        src = graph.add_buffer(width=frame.shape[1], height=frame.shape[0], format="rgb24", time_base=1)
        scale = graph.add("scale", f"{width}:{height}:flags={self.video_interpolation}")
        fmt = graph.add("format", "rgb24")
        sink = graph.add("buffersink")
        src.link_to(scale)
        scale.link_to(fmt)
        fmt.link_to(sink)
        graph.configure()
        graph.vpush(video_frame)
        return graph.vpull().to_ndarray()

    # ------------------------------------------------------------------------------------------------------------
    # Preprocessing
    # ------------------------------------------------------------------------------------------------------------

    def normalize_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 `(T, H, W, 3)` -> float32 `(T, 3, H, W)`: `/255`, then `(x - mean) / std` (bit-exact with the original).

        The arithmetic is elementwise, so it is done in the frames' own channels-last layout (fast, contiguous) and
        only the result is permuted; every value is the same float32 operation sequence as the original's.
        """
        x = torch.from_numpy(np.array(frames, dtype=np.uint8, copy=True)).float() / 255.0
        mean = torch.tensor(self.image_mean, dtype=torch.float32)
        std = torch.tensor(self.image_std, dtype=torch.float32)
        return ((x - mean) / std).permute(0, 3, 1, 2)

    def preprocess(
        self,
        videos: Any,
        num_frames: int | None = None,
        fps: float | None = None,
        return_tensors: str | None = "pt",
        return_metadata: bool = False,
        **kwargs: Any,
    ) -> BatchFeature:
        """Decode, sample and normalise a video, or a list of videos (each element is one video or image).

        Returns `pixel_values_videos` `(N, T_max, 3, H, W)` and `video_frames_mask` `(N, T_max)`; with
        `return_metadata=True` also `video_metadata` (one `VideoMetadata` per video).
        """
        items = _as_video_list(videos)
        decoded = [self.load(v, num_frames=num_frames, fps=fps) for v in items]
        return self.batch(decoded, return_tensors=return_tensors, return_metadata=return_metadata)

    def batch(
        self, decoded: list[DecodedVideo], return_tensors: str | None = "pt", return_metadata: bool = False
    ) -> BatchFeature:
        """Normalise decoded videos and stack them, zero-padding frames to the longest video."""
        if not decoded:
            raise ValueError("No videos to process.")
        t_max = max(d.frames.shape[0] for d in decoded)
        height, width = decoded[0].frames.shape[1:3]
        pixels = torch.zeros(len(decoded), t_max, 3, height, width, dtype=torch.float32)
        mask = torch.zeros(len(decoded), t_max, dtype=torch.long)
        with single_torch_thread():
            for n, item in enumerate(decoded):
                t = item.frames.shape[0]
                pixels[n, :t] = self.normalize_frames(item.frames)
                mask[n, :t] = 1
        data: dict[str, Any] = {"pixel_values_videos": pixels, "video_frames_mask": mask}
        if return_tensors == "np":
            data = {k: v.numpy() for k, v in data.items()}
        if return_metadata:
            data["video_metadata"] = [d.metadata for d in decoded]
        return BatchFeature(data, skip_tensor_conversion=["video_metadata"])

    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for key in ("_processor_class", "processor_class"):
            output.pop(key, None)
        return output


def _to_numpy(value: Any, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if PIL is not None and isinstance(value, PIL.Image.Image):
        return np.asarray(value.convert("RGB"))
    raise TypeError(f"Cannot use a {type(value).__name__} as a {what}; expected a uint8 array or tensor.")


def _as_video_list(videos: Any) -> list[Any]:
    """A list where each element is one video (or image)."""
    if isinstance(videos, (list, tuple)):
        if len(videos) == 0:
            raise ValueError("`videos` is an empty list.")
        if PIL is not None and all(isinstance(v, PIL.Image.Image) for v in videos):
            return list(videos)  # a list of PIL images is a list of images (1-frame videos)
        return list(videos)
    if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5:
        return list(videos)
    return [videos]
