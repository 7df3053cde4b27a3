# Copyright 2025 The transformers-videollama contributors.
# SPDX-License-Identifier: BSD-3-Clause
"""Video (and image) processor for Video-LLaMA.

Reproduces what the original demo fed the vision branch, pixel for pixel:

* video: decord-style frame sampling (`floor(i * n_total / 8)`, fewer frames when the video has fewer), frames
  stretched to 224x224 by FFmpeg's bilinear `scale` filter (see `media_io_videollama`), then `/255` and the CLIP
  mean/std normalisation (`AlproVideoEvalProcessor.transform`);
* image: `Image.open(path).convert("RGB")`, PIL bicubic resize to 224x224 (no crop, no EXIF transpose), `/255`,
  CLIP normalisation (`Blip2ImageEvalProcessor`); an image is a video with one frame.

Training augmentation (`do_train_augmentation=True`, off by default and never used at inference) reproduces the
original's training processors: `RandomResizedCrop(224, scale=(0.5, 1), ratio=(3/4, 4/3), bicubic)`, one crop per
clip, applied to the already squashed 224x224 frames (`AlproVideoTrainProcessor`) or to the full still image
(`Blip2ImageTrainProcessor`), and optionally the stage-1 "headtail" frame sampling (half the frames drawn at random
from each half of the video). One deliberate difference: the bicubic overshoot is clamped to 0..255, where the
original's `.to(torch.uint8)` wrapped it around (speckle pixels).

Output: `pixel_values_videos` `(num_videos, T, 3, 224, 224)` float32. When the videos of one call have different
frame counts they are zero-padded to the longest and `video_frames_mask` `(num_videos, T)` marks real frames (it is
always returned).
"""

from __future__ import annotations

import io
import math
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
    probe_video,
    read_video_frames,
    resize_rgb_frames,
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


__all__ = ["DecodedVideo", "VideoLlamaVideoProcessor", "frames_message", "headtail_frame_indices"]

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
        do_train_augmentation (`bool`, defaults to `False`): random resized crop as the original's *training*
            processors (see the module docstring). Leave it off for inference and evaluation.
        crop_scale / crop_ratio: area fraction and aspect-ratio range of the random crop ((0.5, 1.0), (3/4, 4/3)).
        frame_sampling (`str`, defaults to `"uniform"`): `"uniform"` (demo and instruction data) or `"headtail"`
            (the original's stage-1 video-caption sampling; random, used only with `do_train_augmentation`).
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
        do_train_augmentation: bool = False,
        crop_scale: Sequence[float] = (0.5, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        frame_sampling: str = "uniform",
        **kwargs: Any,
    ):
        kwargs.pop("video_processor_type", None)
        if frame_sampling not in ("uniform", "headtail"):
            raise ValueError(f"`frame_sampling` must be 'uniform' or 'headtail', got {frame_sampling!r}.")
        if not (0 < crop_scale[0] <= crop_scale[1] <= 1) or not (0 < crop_ratio[0] <= crop_ratio[1]):
            raise ValueError(f"Bad crop range: crop_scale={tuple(crop_scale)}, crop_ratio={tuple(crop_ratio)}.")
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.fps = fps
        self.size = dict(size) if size is not None else {"height": 224, "width": 224}
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.video_interpolation = video_interpolation
        self.image_resample = image_resample
        self.do_sample_frames = do_sample_frames
        self.do_train_augmentation = do_train_augmentation
        self.crop_scale = list(crop_scale)
        self.crop_ratio = list(crop_ratio)
        self.frame_sampling = frame_sampling

    # ------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------

    def load(
        self, video: Any, num_frames: int | None = None, fps: float | None = None, augment: bool | None = None
    ) -> DecodedVideo:
        """Decode and sample one video / image into uint8 frames at the output size.

        Accepts a path, bytes or binary file object (video or image file), a `PIL.Image` (1 frame), a list of PIL
        images (the frames of one video), a uint8 array/tensor `(H, W, 3)` (1 frame), `(T, H, W, 3)` or
        `(T, 3, H, W)`, or an already decoded `DecodedVideo` (returned unchanged). `augment` overrides
        `do_train_augmentation` for this call (random crop, and headtail sampling if configured).
        """
        if isinstance(video, DecodedVideo):
            return video
        augment = self.do_train_augmentation if augment is None else augment
        if not augment:
            return self._load(video, num_frames, fps, augment=False)
        decoded = self._load(video, num_frames, fps, augment=True)
        if decoded.kind == "video":
            decoded.frames = self._random_resized_crop_frames(decoded.frames)
        return decoded

    def _load(self, video: Any, num_frames: int | None, fps: float | None, augment: bool) -> DecodedVideo:
        num_frames = self.num_frames if num_frames is None else num_frames
        fps = self.fps if fps is None else fps
        height, width = self.size["height"], self.size["width"]
        if isinstance(video, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(video, "read"):
            image = self._try_open_image(video)
            if image is not None:
                return self._from_pil(image, describe_source(video), augment)
            indices = None
            if augment and self.frame_sampling == "headtail":
                if hasattr(video, "seek"):
                    video.seek(0)
                indices = headtail_frame_indices(probe_video(video).num_frames, num_frames or 8)
                if hasattr(video, "seek"):
                    video.seek(0)
            frames, info, indices = read_video_frames(
                video,
                indices=indices,
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
            return self._from_pil(video, "the PIL image", augment)
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

    def _from_pil(self, image: Any, name: str, augment: bool = False) -> DecodedVideo:
        height, width = self.size["height"], self.size["width"]
        image = image.convert("RGB")
        if augment:  # Blip2ImageTrainProcessor: RandomResizedCrop on the full image, then resize (bicubic)
            top, left, crop_h, crop_w = self._crop_params(image.height, image.width)
            image = image.crop((left, top, left + crop_w, top + crop_h))
        resized = image.resize((width, height), resample=self.image_resample)
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
        height, width = self.size["height"], self.size["width"]
        frames = resize_rgb_frames(array[indices], width, height, self.video_interpolation)
        metadata = VideoMetadata(
            total_num_frames=total, fps=None, width=array.shape[2], height=array.shape[1], frames_indices=indices
        )
        return DecodedVideo(frames=frames, metadata=metadata, kind="video", source_name="the video array")

    def _crop_params(self, height: int, width: int) -> tuple[int, int, int, int]:
        """torchvision's `RandomResizedCrop.get_params` (10 tries, then a centre crop), on torch's RNG."""
        area = height * width
        log_ratio = torch.log(torch.tensor(self.crop_ratio, dtype=torch.float64))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.crop_scale[0], self.crop_scale[1]).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item()).item())
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,)).item())
                left = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.crop_ratio):
            w, h = width, int(round(width / min(self.crop_ratio)))
        elif in_ratio > max(self.crop_ratio):
            h, w = height, int(round(height * max(self.crop_ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def _random_resized_crop_frames(self, frames: np.ndarray) -> np.ndarray:
        """`RandomResizedCropVideo`: one crop for the whole clip, bicubic back to the output size, clamped to uint8."""
        num_frames, height, width = frames.shape[:3]
        top, left, crop_h, crop_w = self._crop_params(height, width)
        clip = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + crop_h, left : left + crop_w]))
        clip = clip.permute(0, 3, 1, 2).float()
        out = torch.nn.functional.interpolate(
            clip, size=(self.size["height"], self.size["width"]), mode="bicubic", align_corners=False
        )
        return out.clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

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


def headtail_frame_indices(num_total: int, num_frames: int) -> list[int]:
    """The original's stage-1 "headtail" sampling: `num_frames // 2` sorted random frames from each half.

    Like the original it needs at least `num_frames // 2` frames in each half (it raised and retried another sample);
    here a clear error names the numbers.
    """
    half = num_frames // 2
    if num_total // 2 < half or num_total - num_total // 2 < half:
        raise ValueError(
            f"Headtail sampling of {num_frames} frames needs at least {half} frames in each half of the video, but "
            f"it has {num_total} frames."
        )
    head = sorted(torch.randperm(num_total // 2)[:half].tolist())
    tail = sorted((num_total // 2 + torch.randperm(num_total - num_total // 2)[:half]).tolist())
    return head + tail


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
