"""Video-LLaMA: an audio-visual language model for video understanding (Zhang, Li, Bing, 2023; arXiv 2306.02858).

Original code: https://github.com/DAMO-NLP-SG/Video-LLaMA. This is a transformers-native re-implementation whose
numbers match the original (see tests/test_parity_videollama.py).

Data flow (release sizes; N = number of videos/audios in the batch, T frames, S clips):

    vision branch
    pixel_values_videos (N, T, 3, 224, 224)
      -> fold frames               (N*T, 3, 224, 224)
      -> vision_tower              (N*T, 257, 1408)   EVA-CLIP ViT-g + ln_vision            [Blip2VisionModel]
      -> qformer (32 queries)      (N*T, 32, 768)     BLIP-2 Q-Former, frozen               [Blip2QFormerModel]
         (or frame_query_embeds (N, T, 32, 768): these frozen outputs, precomputed for training)
      -> + video_position_embedding[t]                one learned vector per frame index (max_frame_pos = 32)
      -> unfold frames             (N, T*32, 768)
      -> video_qformer (32 queries)(N, 32, 768)       2 layers, cross-attends to all frames
      -> video_projection          (N, 32, 4096)      -> replaces the 32 `<ImageHere>` tokens of each video

    audio branch
    input_values (N, S=8, 1, 128, 204)                log-mel of 8 two-second clips
      -> audio_tower               (N, S, 1024)       ImageBind-huge audio trunk, joint-space embedding
         (or audio_clip_embeds (N, S, 1024): these frozen outputs, precomputed for training)
      -> + audio_position_embedding[s]                (max_audio_clips = 8)
      -> audio_qformer (8 queries) (N, 8, 768)        2 layers
      -> audio_projection          (N, 8, 4096)       -> replaces the 8 `<AudioHere>` tokens of each audio

    text
    input_ids (B, L) with placeholders -> embed_tokens (placeholders map to id 0, they are outside the vocabulary)
      -> masked_scatter of the video/audio features over their placeholders, in order
      -> language_model (LLaMA) -> lm_head -> logits (B, L, 32000)

Placeholder ids (32000/32001) lie outside the LLM vocabulary, so the embedding matrix and `lm_head` keep the released
LLaMA shapes and placeholders can never be generated. The language model's linears and `lm_head` are
`DecodeStepLinear`s: plain `nn.Linear`s whose float32 CPU decode steps use every core (see the class).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoModel,
    Blip2QFormerModel,
    Blip2VisionModel,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from .configuration_videollama import VideoLlamaConfig, VideoLlamaQFormerConfig, VideoLlamaVisionConfig
from .modeling_imagebind import ImageBindAudioModel, ImageBindVisionModel


@dataclass
class VideoLlamaModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    video_hidden_states (`torch.FloatTensor` of shape `(num_videos, num_video_query_tokens, hidden_size)`, *optional*):
        Projected video features that replaced the video placeholders.
    audio_hidden_states (`torch.FloatTensor` of shape `(num_audios, num_audio_query_tokens, hidden_size)`, *optional*):
        Projected audio features that replaced the audio placeholders.
    """

    video_hidden_states: torch.FloatTensor | None = None
    audio_hidden_states: torch.FloatTensor | None = None


@dataclass
class VideoLlamaCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    video_hidden_states (`torch.FloatTensor`, *optional*): see [`VideoLlamaModelOutputWithPast`].
    audio_hidden_states (`torch.FloatTensor`, *optional*): see [`VideoLlamaModelOutputWithPast`].
    """

    video_hidden_states: torch.FloatTensor | None = None
    audio_hidden_states: torch.FloatTensor | None = None


class VideoLlamaVisionModel(Blip2VisionModel):
    """EVA-CLIP ViT-g with BLIP-2's `ln_vision` as its final LayerNorm.

    `Blip2VisionModel` is the same network; the only difference is the epsilon of the last LayerNorm (LAVIS' separate
    `ln_vision` uses PyTorch's default 1e-5, the blocks 1e-6), which matters for exact parity.
    """

    config: VideoLlamaVisionConfig

    def __init__(self, config: VideoLlamaVisionConfig):
        super().__init__(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.post_layer_norm_eps)


class VideoLlamaQFormerModel(Blip2QFormerModel):
    """A BLIP-2 Q-Former together with its learned query tokens.

    Keeping the queries inside the module (rather than as a bare parameter of the top model) keeps `model.dtype`
    equal to the language model's dtype and lets PEFT train them through `modules_to_save`.
    """

    config: VideoLlamaQFormerConfig

    def __init__(self, config: VideoLlamaQFormerConfig):
        super().__init__(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.hidden_size))
        # Blip2QFormerModel.__init__ ran post_init() (and flagged this module initialised) before the queries existed;
        # unflag it so the composite model's post_init draws them (all-zero queries make the LayerNorm's gradient
        # explode when a fresh Q-Former is trained).
        self._is_hf_initialized = False

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            init.normal_(self.query_tokens, mean=0.0, std=self.config.initializer_range)

    def forward(
        self,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Cross-attend the learned queries to `encoder_hidden_states` (B, L, encoder_hidden_size) -> (B, Q, H)."""
        queries = self.query_tokens.expand(encoder_hidden_states.shape[0], -1, -1)
        return super().forward(
            query_embeds=queries,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            **kwargs,
        )


class DecodeStepLinear(nn.Linear):
    """`nn.Linear` whose float32 CPU products with a few rows (the decode steps of `generate()`) use every core.

    Why: a decode step multiplies one row per sequence by each weight of the language model. For float32 on the CPU,
    PyTorch hands such a product to MKL as a matrix-vector product that reads the weight at ~11 GB/s on this
    benchmark machine (2 cores), a third of what the memory gives: the language model's weights (cold in cache: 126 MB
    of 512- and 1376-wide products) took 11.4 ms, the same products as one batched product over row blocks of the
    (unchanged, row-major) weight 4.8 ms; the 32000 x 512 head 5.9 -> 1.6 ms, a 32000 x 4096 head 24 -> 16 ms. So
    inputs with at most 8 rows, float32 on the CPU, without autograd, take that form; everything else (prompts,
    training, bfloat16, GPUs) is `nn.Linear.forward`. Same products, summed in another order (float32 rounding,
    ~1e-6 relative). The state dict, hooks, PEFT and transformers' quantizers (`isinstance(m, nn.Linear)`) see an
    `nn.Linear`; `torch.ao.quantization.quantize_dynamic` matches exact types, so name this class in its spec too.
    """

    MAX_ROWS = 8  # measured: 1-8 rows 2.4-1.2x faster this way, 16 rows even

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, out_features = self.weight, self.out_features
        rows = input.numel() // self.in_features if self.in_features else 0
        if (
            not 0 < rows <= self.MAX_ROWS
            or torch.is_grad_enabled()
            or input.device.type != "cpu"
            or weight.device.type != "cpu"
            or not input.dtype == weight.dtype == torch.float32
            or not weight.is_contiguous()
        ):
            return super().forward(input)
        blocks = min(torch.get_num_threads(), out_features)  # one block of output rows per thread, if they divide
        while blocks > 1 and out_features % blocks:
            blocks -= 1
        if blocks < 2:
            return super().forward(input)
        columns = input.reshape(rows, self.in_features).T  # (in, rows)
        blocked = weight.view(blocks, out_features // blocks, self.in_features)  # a view: no copy of the weight
        output = torch.bmm(blocked, columns.expand(blocks, *columns.shape)).reshape(out_features, rows).T
        if self.bias is not None:
            output = output + self.bias
        return output.reshape(*input.shape[:-1], out_features)


def use_decode_step_linears(module: nn.Module) -> nn.Module:
    """Make every plain `nn.Linear` inside `module` a `DecodeStepLinear` (in place: same parameters, same names)."""
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = DecodeStepLinear
    return module


class VideoLlamaPreTrainedModel(PreTrainedModel):
    config: VideoLlamaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["past_key_values", "cache"]
    # Q-Formers are small; keeping each whole (queries + layers) on one device avoids cross-device hops per layer.
    _no_split_modules = ["Blip2EncoderLayer", "VideoLlamaQFormerModel", "ImageBindEncoderLayer"]

    def enable_input_require_grads(self) -> None:
        """Make the *language model's* input embeddings require grad (activation checkpointing, PEFT adapters).

        The base implementation hooks the input embeddings of every sub-model, the frozen EVA ViT, Q-Formers and
        ImageBind trunks included: their forward would then build an autograd graph and backward would run through
        them for nothing (an encoder that does train builds its graph from its own parameters anyway).
        """

        def make_inputs_require_grads(module, args, output):
            output.requires_grad_(True)

        self.disable_input_require_grads()
        hook = self.get_input_embeddings().register_forward_hook(make_inputs_require_grads)
        self._require_grads_hooks = [hook]
        self._require_grads_hook = hook


class VideoLlamaModel(VideoLlamaPreTrainedModel):
    """Video-LLaMA without the language-modelling head: encoders, Q-Formers, projections and the LLM backbone."""

    def __init__(self, config: VideoLlamaConfig):
        super().__init__(config)
        qformer_hidden = config.qformer_config.hidden_size
        text_hidden = config.text_config.hidden_size

        self.vision_tower = VideoLlamaVisionModel(config.vision_config)
        self.qformer = VideoLlamaQFormerModel(config.qformer_config)
        self.video_position_embedding = nn.Embedding(config.max_frame_pos, qformer_hidden)
        self.video_qformer = VideoLlamaQFormerModel(config.video_qformer_config)
        self.video_projection = nn.Linear(config.video_qformer_config.hidden_size, text_hidden)

        if config.has_audio_branch:
            self.audio_tower = ImageBindAudioModel(config.audio_config)
            self.audio_position_embedding = nn.Embedding(config.max_audio_clips, config.audio_config.projection_dim)
            self.audio_qformer = VideoLlamaQFormerModel(config.audio_qformer_config)
            self.audio_projection = nn.Linear(config.audio_qformer_config.hidden_size, text_hidden)
        # Only needed to train the audio branch on images (ImageBind's shared space); absent at inference.
        if config.imagebind_vision_config is not None:
            self.imagebind_vision_tower = ImageBindVisionModel(config.imagebind_vision_config)

        self.language_model = use_decode_step_linears(AutoModel.from_config(config.text_config))
        self.post_init()

    # ----------------------------------------------------------------------------------------------------------------
    # Encoders
    # ----------------------------------------------------------------------------------------------------------------
    def _frame_query_tokens(
        self, pixel_values_videos: torch.Tensor | None, frame_query_embeds: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames (or their precomputed frozen outputs) -> per-frame Q-Former queries with frame position added:
        (N, T, Q, H), and the (T, H) positions."""
        if (pixel_values_videos is None) == (frame_query_embeds is None):
            raise ValueError("Pass exactly one of pixel_values_videos or frame_query_embeds")
        if frame_query_embeds is not None:
            expected = (self.config.num_query_tokens, self.config.qformer_config.hidden_size)
            if frame_query_embeds.ndim != 4 or tuple(frame_query_embeds.shape[2:]) != expected:
                raise ValueError(
                    "frame_query_embeds must have shape (num_videos, num_frames, num_query_tokens, qformer hidden) = "
                    f"(N, T, {expected[0]}, {expected[1]}), got {tuple(frame_query_embeds.shape)}"
                )
            num_videos, num_frames = frame_query_embeds.shape[:2]
        elif pixel_values_videos.ndim != 5:
            raise ValueError(
                "pixel_values_videos must have shape (num_videos, num_frames, channels, height, width), "
                f"got {tuple(pixel_values_videos.shape)}"
            )
        else:
            num_videos, num_frames = pixel_values_videos.shape[:2]
        if num_frames > self.config.max_frame_pos:
            raise ValueError(
                f"The videos have {num_frames} frames but the model has frame position embeddings for at most "
                f"max_frame_pos={self.config.max_frame_pos} frames; sample fewer frames"
            )
        if frame_query_embeds is None:
            pixel_values = pixel_values_videos.flatten(0, 1).to(
                self.vision_tower.embeddings.patch_embedding.weight.dtype
            )
            # 1-2. EVA ViT-g + BLIP-2 Q-Former on every frame: (N*T, 3, H, W) -> (N*T, Q, Dq)
            frame_queries = self._encode_frames(pixel_values)
            frame_queries = frame_queries.view(num_videos, num_frames, *frame_queries.shape[1:])
        else:  # 1-2 ran earlier (`precompute_frozen_features`): (N, T, Q, Dq)
            frame_queries = frame_query_embeds.to(self.video_position_embedding.weight.dtype)
        # 3. + frame position embedding, broadcast over the queries: (N, T, Q, Dq)
        positions = self.video_position_embedding(torch.arange(num_frames, device=frame_queries.device))  # (T, Dq)
        return frame_queries + positions[:, None], positions

    def _encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen image path, per frame: (M, 3, H, W) -> BLIP-2 Q-Former queries (M, Q, Dq).

        One method for both frozen networks so that training can memoise it (`cache_frozen_encoders`).
        """
        # 1. EVA ViT-g (+ ln_vision): (M, 3, H, W) -> (M, 1 + P, Dv)
        frame_features = self.vision_tower(pixel_values=pixel_values).last_hidden_state
        # 2. BLIP-2 Q-Former: (M, 1 + P, Dv) -> (M, Q, Dq)
        return self.qformer(encoder_hidden_states=frame_features).last_hidden_state

    def _encode_audio_clips(self, input_values: torch.Tensor) -> torch.Tensor:
        """The frozen ImageBind audio trunk, per clip: (N, S, 1, mel, time) -> joint-space embeddings (N, S, P).

        A method of its own so that training can memoise it (`cache_frozen_encoders`).
        """
        return self.audio_tower(input_values=input_values).embeds

    def _frames_mask(self, video_frames_mask: torch.Tensor | None, num_queries: int) -> torch.Tensor | None:
        """(N, T) frame mask -> (N, T*Q) key mask for the video Q-Former (padded frames are never attended)."""
        if video_frames_mask is None:
            return None
        return video_frames_mask.to(torch.long).repeat_interleave(num_queries, dim=1)

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor | None = None,
        video_frames_mask: torch.Tensor | None = None,
        frame_query_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Encode videos (an image is a video with T=1).

        Args:
            pixel_values_videos (`torch.FloatTensor` of shape `(num_videos, num_frames, 3, height, width)`):
                Normalised frames.
            video_frames_mask (`torch.LongTensor` of shape `(num_videos, num_frames)`, *optional*):
                1 for real frames, 0 for padding (when videos of different lengths share a batch).
            frame_query_embeds (`torch.FloatTensor` of shape `(num_videos, num_frames, num_query_tokens, qformer
                hidden)`, *optional*): instead of `pixel_values_videos`, the frozen image path's output per frame
                (EVA ViT + BLIP-2 Q-Former, steps 1-2), e.g. computed once for a whole training set by
                `precompute_frozen_features`.

        Returns:
            `BaseModelOutputWithPooling` whose `pooler_output` holds the features that replace the placeholders,
            `(num_videos, num_video_query_tokens, text_hidden_size)`, and `last_hidden_state` the video Q-Former output.
        """
        frame_queries, _ = self._frame_query_tokens(pixel_values_videos, frame_query_embeds)  # (N, T, Q, Dq)
        num_videos, num_frames, num_queries, hidden = frame_queries.shape
        # 4. video Q-Former over all frames' queries: (N, T*Q, Dq) -> (N, Qv, Dq)
        video_hidden = self.video_qformer(
            encoder_hidden_states=frame_queries.reshape(num_videos, num_frames * num_queries, hidden),
            encoder_attention_mask=self._frames_mask(video_frames_mask, num_queries),
        ).last_hidden_state
        # 5. into the LLM embedding space: (N, Qv, Dq) -> (N, Qv, D_text)
        return BaseModelOutputWithPooling(
            last_hidden_state=video_hidden, pooler_output=self.video_projection(video_hidden)
        )

    def _require_audio_branch(self) -> None:
        if not self.config.has_audio_branch:
            raise ValueError(
                "This Video-LLaMA variant has no audio branch (config.has_audio_branch=False); "
                "drop the audio input or use a checkpoint with an audio branch"
            )

    def _audio_query_features(
        self, clip_embeds: torch.Tensor, clips_mask: torch.Tensor | None = None
    ) -> BaseModelOutputWithPooling:
        """Joint-space clip embeddings (N, S, P) -> + clip position -> audio Q-Former -> projection.

        `clips_mask` (N, S): 1 for real clips/frames, 0 for padding (never attended).
        """
        num_clips = clip_embeds.shape[1]
        if num_clips > self.config.max_audio_clips:
            raise ValueError(
                f"Got {num_clips} audio clips (or frames) but the audio position embedding has only "
                f"max_audio_clips={self.config.max_audio_clips} rows"
            )
        positions = self.audio_position_embedding(torch.arange(num_clips, device=clip_embeds.device))  # (S, P)
        audio_hidden = self.audio_qformer(
            encoder_hidden_states=clip_embeds + positions,
            encoder_attention_mask=None if clips_mask is None else clips_mask.to(torch.long),
        ).last_hidden_state
        return BaseModelOutputWithPooling(
            last_hidden_state=audio_hidden, pooler_output=self.audio_projection(audio_hidden)
        )

    def get_audio_features(
        self, input_values: torch.Tensor | None = None, audio_clip_embeds: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Encode audio tracks.

        Args:
            input_values (`torch.FloatTensor` of shape `(num_audios, num_clips, 1, num_mel_bins, target_length)`):
                Normalised log-mel clips (8 x 1 x 128 x 204 in the release).
            audio_clip_embeds (`torch.FloatTensor` of shape `(num_audios, num_clips, projection_dim)`, *optional*):
                instead of `input_values`, the frozen ImageBind audio trunk's output per clip (step 1), e.g. computed
                once for a whole training set by `precompute_frozen_features`.

        Returns:
            `BaseModelOutputWithPooling` with `pooler_output` of shape
            `(num_audios, num_audio_query_tokens, text_hidden_size)`.
        """
        self._require_audio_branch()
        if (input_values is None) == (audio_clip_embeds is None):
            raise ValueError("Pass exactly one of input_values or audio_clip_embeds")
        if audio_clip_embeds is not None:
            width = self.config.audio_config.projection_dim
            if audio_clip_embeds.ndim != 3 or audio_clip_embeds.shape[-1] != width:
                raise ValueError(
                    f"audio_clip_embeds must have shape (num_audios, num_clips, {width}), "
                    f"got {tuple(audio_clip_embeds.shape)}"
                )
            return self._audio_query_features(audio_clip_embeds.to(self.audio_position_embedding.weight.dtype))
        if input_values.ndim != 5:
            raise ValueError(
                "input_values must have shape (num_audios, num_clips, 1, num_mel_bins, target_length), "
                f"got {tuple(input_values.shape)}"
            )
        # 1. ImageBind audio trunk per clip -> joint-space embedding: (N, S, 1, 128, 204) -> (N, S, P)
        clip_embeds = self._encode_audio_clips(input_values)
        # 2-4. + clip position -> audio Q-Former -> projection: (N, S, P) -> (N, Qa, D_text)
        return self._audio_query_features(clip_embeds)

    def get_audio_features_from_images(
        self, pixel_values_videos: torch.Tensor, video_frames_mask: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Audio-branch training signal: encode *frames* with ImageBind's vision trunk and feed the audio Q-Former.

        ImageBind puts images and sounds in one embedding space, so Video-LLaMA trains the audio Q-Former on visual data
        and uses it on audio at inference. Each frame is an independent image. `pixel_values_videos`: (N, T, 3, H, W);
        `video_frames_mask` (N, T) marks padded frames, which the audio Q-Former then ignores.
        """
        self._require_audio_branch()
        if not hasattr(self, "imagebind_vision_tower"):
            raise ValueError(
                "This model has no ImageBind vision trunk (config.imagebind_vision_config is None); convert it with "
                "the vision trunk to train the audio branch on images"
            )
        pixel_values_videos = pixel_values_videos.to(self.imagebind_vision_tower.dtype)
        clip_embeds = self.imagebind_vision_tower(pixel_values=pixel_values_videos).embeds  # (N, T, P)
        return self._audio_query_features(clip_embeds, video_frames_mask)

    def get_audio_visual_features(
        self, pixel_values_videos: torch.Tensor, input_values: torch.Tensor, **kwargs
    ) -> BaseModelOutputWithPooling:
        """The original's joint audio-visual path (`encode_videoQformer_audiovideo`).

        Each clip's ImageBind feature *before* the projection (the head LayerNorm'd CLS), plus the frame position of the
        same index, is appended to the frame tokens, and the *video* Q-Former and projection read them all. Needs as
        many clips as frames and an audio width equal to the Q-Former width (true in the release: 768 / 768).
        Returns `pooler_output` of shape `(num_videos, num_video_query_tokens, text_hidden_size)`.
        """
        self._require_audio_branch()
        frame_queries, positions = self._frame_query_tokens(pixel_values_videos)  # (N, T, Q, Dq), (T, Dq)
        num_videos, num_frames, num_queries, hidden = frame_queries.shape
        clip_features = self.audio_tower(input_values=input_values).pooler_output  # (N, S, Da)
        if clip_features.shape[1] != num_frames or clip_features.shape[2] != hidden:
            raise ValueError(
                "The joint audio-visual path needs one audio clip per frame and audio width == Q-Former width; got "
                f"{num_frames} frames x {hidden} and {clip_features.shape[1]} clips x {clip_features.shape[2]}"
            )
        tokens = torch.cat(
            [frame_queries.reshape(num_videos, num_frames * num_queries, hidden), clip_features + positions], dim=1
        )  # (N, T*Q + S, Dq)
        video_hidden = self.video_qformer(encoder_hidden_states=tokens).last_hidden_state
        return BaseModelOutputWithPooling(
            last_hidden_state=video_hidden, pooler_output=self.video_projection(video_hidden)
        )

    # ----------------------------------------------------------------------------------------------------------------
    # Merge and run the language model
    # ----------------------------------------------------------------------------------------------------------------
    def _scatter_features(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        features: torch.Tensor,
        token_id: int,
        modality: str,
    ) -> torch.Tensor:
        """Replace the `token_id` placeholders of `inputs_embeds` by `features` (num_items, tokens, D), in order."""
        mask = input_ids == token_id
        n_tokens, n_features = int(mask.sum()), features.shape[0] * features.shape[1]
        if n_tokens != n_features:
            raise ValueError(
                f"{modality.capitalize()} features and {modality} placeholder tokens do not match: input_ids contain "
                f"{n_tokens} {modality} placeholder tokens (id {token_id}) but the {modality} features provide "
                f"{n_features} tokens ({features.shape[0]} {modality}(s) x {features.shape[1]} query tokens)"
            )
        features = features.to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1).to(inputs_embeds.device), features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        video_frames_mask: torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        imagebind_pixel_values: torch.FloatTensor | None = None,
        imagebind_frames_mask: torch.Tensor | None = None,
        frame_query_embeds: torch.FloatTensor | None = None,
        audio_clip_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> VideoLlamaModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, seq_len)`):
                Token ids with `num_video_query_tokens` video placeholders per video and `num_audio_query_tokens`
                audio placeholders per audio track.
            pixel_values_videos (`torch.FloatTensor` of shape `(num_videos, num_frames, 3, H, W)`, *optional*):
                All videos (and images, T=1) of the batch, in placeholder order.
            input_values (`torch.FloatTensor` of shape `(num_audios, num_clips, 1, 128, 204)`, *optional*):
                All audio tracks of the batch, in placeholder order.
            video_frames_mask (`torch.LongTensor` of shape `(num_videos, num_frames)`, *optional*):
                Marks padded frames when videos of different lengths share a batch.
            mm_encoder_outputs (`dict`, *optional*):
                Pre-computed `{"video": get_video_features(...), "audio": get_audio_features(...)}` (what `generate()`
                passes so that each encoder runs once per call).
            imagebind_pixel_values (`torch.FloatTensor` of shape `(num_audios, num_frames, 3, 224, 224)`, *optional*):
                Audio-branch *training* on visual data (the paper's audio stages): frames encoded by ImageBind's
                vision trunk feed the audio Q-Former, whose output fills the `<AudioHere>` placeholders, in place of
                `input_values`. Needs `config.imagebind_vision_config`.
            imagebind_frames_mask (`torch.LongTensor` of shape `(num_audios, num_frames)`, *optional*):
                Marks padded frames of `imagebind_pixel_values`.
            frame_query_embeds (`torch.FloatTensor` of shape `(num_videos, num_frames, num_query_tokens, Dq)`,
                *optional*): the frozen image path's output per frame, in place of `pixel_values_videos` (see
                `get_video_features`; `precompute_frozen_features` makes them for a training set).
            audio_clip_embeds (`torch.FloatTensor` of shape `(num_audios, num_clips, projection_dim)`, *optional*):
                the frozen audio trunk's output per clip, in place of `input_values` (see `get_audio_features`).
            kwargs: passed to the language model (`attention_mask` semantics, cache, `use_cache`, ...).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Specify exactly one of input_ids or inputs_embeds")
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if (input_values is not None or audio_clip_embeds is not None) and imagebind_pixel_values is not None:
            raise ValueError(
                "Pass either input_values (audio) or imagebind_pixel_values (audio-branch training on frames), not both"
            )
        has_media = (
            pixel_values_videos is not None
            or frame_query_embeds is not None
            or input_values is not None
            or audio_clip_embeds is not None
            or imagebind_pixel_values is not None
            or mm_encoder_outputs
        )
        if inputs_embeds is None:
            # 1. text embeddings; placeholders are outside the vocabulary, embed them as id 0 before replacing them
            is_placeholder = (input_ids == self.config.video_token_index) | (
                input_ids == self.config.audio_token_index
            )
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(is_placeholder, 0))
        elif has_media:
            raise ValueError("Multimodal inputs need input_ids (the placeholders are located by their ids)")

        # 2. video features over the video placeholders: (N, Qv, D)
        if mm_encoder_outputs.get("video") is None and (
            pixel_values_videos is not None or frame_query_embeds is not None
        ):
            mm_encoder_outputs["video"] = self.get_video_features(
                pixel_values_videos, video_frames_mask, frame_query_embeds=frame_query_embeds
            )
        video_features = None
        if mm_encoder_outputs.get("video") is not None:
            video_features = mm_encoder_outputs["video"].pooler_output
            if not isinstance(video_features, torch.Tensor):  # generate() may hand back a list per video
                video_features = torch.stack(list(video_features))
            inputs_embeds = self._scatter_features(
                input_ids, inputs_embeds, video_features, self.config.video_token_index, "video"
            )
        elif input_ids is not None and (input_ids == self.config.video_token_index).any():
            raise ValueError("input_ids contain video placeholder tokens but no pixel_values_videos were given")

        # 3. audio features over the audio placeholders: (N, Qa, D)
        audio_features = None
        if (
            mm_encoder_outputs.get("audio") is not None
            or input_values is not None
            or audio_clip_embeds is not None
            or imagebind_pixel_values is not None
        ):
            if mm_encoder_outputs.get("audio") is not None:  # pre-encoded by generate() (or a chat session)
                audio_features = mm_encoder_outputs["audio"].pooler_output
                if not isinstance(audio_features, torch.Tensor):
                    audio_features = torch.stack(list(audio_features))
            elif input_values is not None or audio_clip_embeds is not None:
                audio_features = self.get_audio_features(
                    input_values, audio_clip_embeds=audio_clip_embeds
                ).pooler_output
            else:
                audio_features = self.get_audio_features_from_images(
                    imagebind_pixel_values, imagebind_frames_mask
                ).pooler_output
            inputs_embeds = self._scatter_features(
                input_ids, inputs_embeds, audio_features, self.config.audio_token_index, "audio"
            )
        elif input_ids is not None and (input_ids == self.config.audio_token_index).any():
            # After the first generation step the audio inputs are dropped and only new tokens are fed, so this
            # only fires for a genuinely missing input.
            raise ValueError("input_ids contain audio placeholder tokens but no input_values were given")

        # 4. the language model over the merged sequence
        outputs = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        return VideoLlamaModelOutputWithPast(
            **outputs, video_hidden_states=video_features, audio_hidden_states=audio_features
        )


class VideoLlamaForConditionalGeneration(VideoLlamaPreTrainedModel, GenerationMixin):
    """Video-LLaMA with its language-modelling head: what `generate()`, `Trainer` and PEFT use."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: VideoLlamaConfig):
        super().__init__(config)
        self.model = VideoLlamaModel(config)
        self.lm_head = DecodeStepLinear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def _prepare_multimodal_encoder_kwargs_for_generation(self, model_kwargs: dict) -> dict:
        """`generate()` pre-encodes videos before prefill; encode the audio there too.

        Without this the audio tower would run inside prefill on the beam-expanded batch (`num_beams` times the work),
        and `repeat_interleave` over `input_values` would interleave the tracks of a sample with several audio inputs.
        """
        encoded = model_kwargs.setdefault("mm_encoder_outputs", {})
        if model_kwargs.get("frame_query_embeds") is not None:  # precomputed frozen outputs: steps 3-5 only
            if model_kwargs.get("pixel_values_videos") is not None or encoded.get("video") is not None:
                raise ValueError("Pass one of pixel_values_videos, frame_query_embeds or mm_encoder_outputs['video']")
            encoded["video"] = self.model.get_video_features(
                frame_query_embeds=model_kwargs.pop("frame_query_embeds"),
                video_frames_mask=model_kwargs.pop("video_frames_mask", None),
            )
        model_kwargs = super()._prepare_multimodal_encoder_kwargs_for_generation(model_kwargs)
        for key in ("input_values", "audio_clip_embeds"):
            if model_kwargs.get(key) is None:
                continue
            if model_kwargs["mm_encoder_outputs"].get("audio") is not None:
                raise ValueError(
                    "Pass one of input_values, audio_clip_embeds or pre-computed audio features (mm_encoder_outputs)"
                )
            model_kwargs["mm_encoder_outputs"]["audio"] = self.model.get_audio_features(**{key: model_kwargs.pop(key)})
        return model_kwargs

    def _expand_multimodal_outputs(self, input_ids, mm_encoder_output, expand_size=1, inputs_embeds=None):
        """Beam search / `num_return_sequences`: repeat each sample's audio features with it, keeping their order."""
        mm_encoder_output = super()._expand_multimodal_outputs(
            input_ids, mm_encoder_output, expand_size=expand_size, inputs_embeds=inputs_embeds
        )
        audio = mm_encoder_output.get("audio")
        if audio is not None and input_ids is not None and expand_size > 1:
            per_sample = (input_ids == self.config.audio_token_index).sum(-1) // self.config.num_audio_query_tokens
            groups = torch.as_tensor(audio.pooler_output).split(per_sample.tolist())
            audio.pooler_output = torch.cat([group.repeat(expand_size, 1, 1) for group in groups])
        return mm_encoder_output

    def get_video_features(
        self, pixel_values_videos: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        return self.model.get_video_features(pixel_values_videos, **kwargs)

    def get_audio_features(self, input_values: torch.Tensor | None = None, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_audio_features(input_values, **kwargs)

    def get_audio_visual_features(
        self, pixel_values_videos: torch.Tensor, input_values: torch.Tensor, **kwargs
    ) -> BaseModelOutputWithPooling:
        return self.model.get_audio_visual_features(pixel_values_videos, input_values, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        video_frames_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        imagebind_pixel_values: torch.FloatTensor | None = None,
        imagebind_frames_mask: torch.Tensor | None = None,
        frame_query_embeds: torch.FloatTensor | None = None,
        audio_clip_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> VideoLlamaCausalLMOutputWithPast:
        r"""
        Same inputs as [`VideoLlamaModel.forward`], plus:

        Args:
            labels (`torch.LongTensor` of shape `(batch_size, seq_len)`, *optional*):
                Next-token targets aligned with `input_ids` (shifted inside the loss); -100 is ignored.
            logits_to_keep (`int` or `torch.Tensor`, *optional*): compute logits only for the last positions.

        Example:

        ```python
        >>> from transformers import AutoModelForImageTextToText, AutoProcessor
        >>> model = AutoModelForImageTextToText.from_pretrained("path/to/converted", trust_remote_code=True)
        >>> processor = AutoProcessor.from_pretrained("path/to/converted", trust_remote_code=True)
        >>> inputs = processor.apply_chat_template(
        ...     [{"role": "user", "content": [{"type": "video", "path": "dog.mp4"}, {"type": "text", "text": "What?"}]}],
        ...     add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        >>> model.generate(**inputs, max_new_tokens=32)
        ```
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values_videos=pixel_values_videos,
            input_values=input_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            video_frames_mask=video_frames_mask,
            mm_encoder_outputs=mm_encoder_outputs,
            imagebind_pixel_values=imagebind_pixel_values,
            imagebind_frames_mask=imagebind_frames_mask,
            frame_query_embeds=frame_query_embeds,
            audio_clip_embeds=audio_clip_embeds,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        # Carry the language model's outputs (cache, hidden states, attentions) over under their own names.
        extra = {k: v for k, v in outputs.items() if k != "last_hidden_state"}
        return VideoLlamaCausalLMOutputWithPast(loss=loss, logits=logits, **extra)


__all__ = [
    "VideoLlamaForConditionalGeneration",
    "VideoLlamaModel",
    "VideoLlamaPreTrainedModel",
    "VideoLlamaQFormerModel",
    "VideoLlamaVisionModel",
]
