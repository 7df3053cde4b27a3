"""Parity with the ORIGINAL Video-LLaMA code (fixture A): convert its release-format files with our converter, run our
model, compare every stage. Tolerances from the issue: hidden states 1e-5, logits 1e-4, greedy ids exact, losses 1e-5.
"""

import pytest
import torch
from _reference import reference_config, reference_inputs, reference_meta, reference_outputs, release_files

from transformers_videollama import VideoLlamaForConditionalGeneration, convert_release


HIDDEN_ATOL = 1e-5
LOGITS_ATOL = 1e-4
LOSS_ATOL = 1e-5


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    convert_release(
        release_files(), out, dtype="float32", config=reference_config(), save_processor=False, progress=False
    )
    return out


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request, converted_dir):
    model = VideoLlamaForConditionalGeneration.from_pretrained(
        converted_dir, attn_implementation=request.param, dtype=torch.float32
    )
    assert model.model.audio_tower.config._attn_implementation == request.param
    assert model.model.video_qformer.config._attn_implementation == request.param
    return model.eval()


def _video(name: str = "video") -> torch.Tensor:
    return reference_inputs()[name].permute(0, 2, 1, 3, 4)  # original (b, c, t, h, w) -> ours (b, t, c, h, w)


class _Capture:
    """Forward hooks recording submodule outputs during one call."""

    def __init__(self, **modules):
        self.values = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(module, args, output):
            self.values[name] = output

        return hook

    def __enter__(self):
        return self.values

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def _close(actual: torch.Tensor, name: str, atol: float = HIDDEN_ATOL) -> None:
    expected = reference_outputs()[name]
    assert actual.shape == expected.shape, name
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"{name}: max abs diff {diff:.3e} > {atol}"


@torch.no_grad()
def test_video_branch_stage_by_stage(model):
    m = model.model
    with _Capture(vit=m.vision_tower, frame_qformer=m.qformer, video_qformer=m.video_qformer) as cap:
        features = model.get_video_features(_video())
    _close(cap["vit"].last_hidden_state, "vit_features")
    _close(cap["frame_qformer"].last_hidden_state, "qformer_last_hidden_state")
    _close(cap["video_qformer"].last_hidden_state, "video_qformer_last_hidden_state")
    _close(features.pooler_output, "video_inputs_llama")
    assert features.pooler_output.shape == (2, m.config.num_video_query_tokens, m.config.text_config.hidden_size)


@torch.no_grad()
def test_video_qformer_input_includes_frame_positions(model):
    """The video Q-Former's keys are the per-frame queries plus the frame position embedding."""
    m = model.model
    seen = {}
    handle = m.video_qformer.register_forward_pre_hook(lambda mod, args, kwargs: seen.update(kwargs), with_kwargs=True)
    try:
        model.get_video_features(_video())
    finally:
        handle.remove()
    _close(seen["encoder_hidden_states"], "video_qformer_encoder_hidden_states")


@torch.no_grad()
def test_image_is_a_one_frame_video(model):
    _close(model.get_video_features(_video("image")).pooler_output, "image_inputs_llama")


@torch.no_grad()
def test_audio_branch_stage_by_stage(model):
    m = model.model
    with _Capture(tower=m.audio_tower, audio_qformer=m.audio_qformer) as cap:
        features = model.get_audio_features(reference_inputs()["audio"])
    _close(cap["tower"].pooler_output, "audio_imagebind_feature")
    _close(cap["tower"].embeds, "audio_imagebind_final_embedding")
    _close(cap["audio_qformer"].last_hidden_state, "audio_qformer_last_hidden_state")
    _close(features.pooler_output, "audio_inputs_llama")
    # the fixed ImageBind logit scale (exp(log 20)) was read from imagebind_huge.pth
    assert cap["tower"].embeds.norm(dim=-1).allclose(torch.tensor(20.0), atol=1e-4)


@torch.no_grad()
def test_audio_qformer_input_is_final_embedding_plus_clip_position(model):
    seen = {}
    handle = model.model.audio_qformer.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    try:
        model.get_audio_features(reference_inputs()["audio"])
    finally:
        handle.remove()
    _close(seen["encoder_hidden_states"], "audio_qformer_encoder_hidden_states")


@torch.no_grad()
def test_joint_audio_visual_path(model):
    m = model.model
    seen = {}
    handle = m.video_qformer.register_forward_pre_hook(lambda mod, args, kwargs: seen.update(kwargs), with_kwargs=True)
    try:
        features = model.get_audio_visual_features(_video(), reference_inputs()["audio"])
    finally:
        handle.remove()
    _close(seen["encoder_hidden_states"], "av_video_qformer_encoder_hidden_states")
    _close(features.last_hidden_state, "av_video_qformer_last_hidden_state")
    _close(features.pooler_output, "av_inputs_llama")


def _prompt_inputs(name: str) -> dict:
    """Build input_ids exactly as the original demo lays out its embeddings: seg0 [media] seg1 [media] seg2."""
    meta, inputs = reference_meta(), reference_inputs()
    config = reference_config()
    prompt = meta["prompts"][name]
    ids, kwargs = [], {}
    for j in range(len(prompt["segments"])):
        ids += inputs[f"prompt_{name}_seg{j}_ids"].tolist()
        if j < len(prompt["multimodal_order"]):
            media = prompt["multimodal_order"][j]
            if media.startswith("audio"):
                ids += [config.audio_token_index] * config.num_audio_query_tokens
                kwargs["input_values"] = inputs["audio"]
            else:
                ids += [config.video_token_index] * config.num_video_query_tokens
                kwargs["pixel_values_videos"] = _video("image" if media.startswith("image") else "video")
    assert len(ids) == prompt["seq_len"]
    input_ids = torch.tensor([ids, ids])  # the same prompt for both samples, as in the fixture
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), **kwargs}


PROMPTS = ["vicuna_video", "vicuna_audio_video", "llama2_video", "llama2_audio_video", "vicuna_image"]


@pytest.mark.parametrize("name", PROMPTS)
@torch.no_grad()
def test_prompt_logits_and_greedy_ids(model, name):
    inputs = _prompt_inputs(name)
    _close(model(**inputs).logits, f"prompt_{name}_logits", atol=LOGITS_ATOL)
    generated = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    new_tokens = generated[:, inputs["input_ids"].shape[1] :]
    # column 0 of the stored ids is the BOS transformers 4.28 put in front of inputs_embeds-only generation
    expected = reference_outputs()[f"prompt_{name}_greedy_ids"][:, 1:]
    assert torch.equal(new_tokens, expected), f"{name}: {new_tokens.tolist()} != {expected.tolist()}"


@pytest.mark.parametrize("name", ["train_multi_vicuna", "train_multi_llama_v2"])
@torch.no_grad()
def test_instruction_training_loss(model, name):
    inputs = reference_inputs()
    out = model(
        input_ids=inputs[f"{name}_input_ids"],
        attention_mask=inputs[f"{name}_attention_mask"].long(),
        labels=inputs[f"{name}_labels"],
        pixel_values_videos=_video(),
    )
    _close(out.loss, f"{name}_loss", atol=LOSS_ATOL)
    _close(out.logits, f"{name}_logits", atol=LOGITS_ATOL)


@torch.no_grad()
def test_caption_training_loss(model):
    """Stage-1 caption batch: [BOS] + video tokens + caption, loss on the caption only."""
    inputs, config = reference_inputs(), reference_config()
    caption, caption_mask = inputs["train_caption_text_ids"], inputs["train_caption_text_attention_mask"]
    batch, n_video = caption.shape[0], config.num_video_query_tokens
    input_ids = torch.cat(
        [torch.ones(batch, 1, dtype=torch.long), torch.full((batch, n_video), config.video_token_index), caption], 1
    )
    attention_mask = torch.cat([torch.ones(batch, 1 + n_video, dtype=torch.long), caption_mask], 1)
    labels = torch.cat([torch.full((batch, 1 + n_video), -100), caption.masked_fill(caption_mask == 0, -100)], 1)
    assert torch.equal(labels, reference_outputs()["train_caption_labels"])
    assert torch.equal(attention_mask, reference_outputs()["train_caption_attention_mask"])
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, pixel_values_videos=_video())
    _close(out.loss, "train_caption_loss", atol=LOSS_ATOL)
    _close(out.logits, "train_caption_logits", atol=LOGITS_ATOL)


@pytest.fixture(scope="module")
def model_with_imagebind_vision(tmp_path_factory):
    """Converted with ImageBind's vision trunk: the audio branch's training path (train_flag 1 in the original)."""
    from transformers_videollama import ImageBindVisionConfig

    imagebind = reference_meta()["imagebind"]
    vision = ImageBindVisionConfig(
        hidden_size=imagebind["vision_embed_dim"],
        num_hidden_layers=imagebind["vision_num_blocks"],
        num_attention_heads=imagebind["vision_num_heads"],
        intermediate_size=4 * imagebind["vision_embed_dim"],
        projection_dim=imagebind["out_embed_dim"],
    )
    out = tmp_path_factory.mktemp("converted_ibvision")
    convert_release(
        release_files(),
        out,
        dtype="float32",
        config=reference_config(imagebind_vision_config=vision),
        include_imagebind_vision=True,
        save_processor=False,
        progress=False,
    )
    return VideoLlamaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()


@torch.no_grad()
def test_audio_branch_fed_with_images(model_with_imagebind_vision):
    model = model_with_imagebind_vision
    tower = model.model.imagebind_vision_tower
    frames = _video("imagebind_vision_input")  # (2, 3 frames, 3, 224, 224)
    with _Capture(embeddings=tower.embeddings, tower=tower, audio_qformer=model.model.audio_qformer) as cap:
        features = model.model.get_audio_features_from_images(frames)
    _close(cap["embeddings"], "ibvision_preprocessor_tokens")
    _close(cap["tower"].last_hidden_state.flatten(0, 1), "ibvision_trunk_output")
    _close(cap["tower"].pooler_output, "ibvision_imagebind_feature")
    _close(cap["tower"].embeds, "ibvision_imagebind_final_embedding")
    _close(cap["audio_qformer"].last_hidden_state, "ibvision_audio_qformer_last_hidden_state")
    _close(features.pooler_output, "ibvision_audio_inputs_llama")

    # The instruction batch of the audio-branch stage: its <ImageHere> placeholders (num_audio_query_tokens per
    # sample) take the audio Q-Former's output; pass it as pre-computed video-slot features.
    inputs = reference_inputs()
    out = model(
        input_ids=inputs["train_ibvision_multi_vicuna_input_ids"],
        attention_mask=inputs["train_ibvision_multi_vicuna_attention_mask"].long(),
        labels=inputs["train_ibvision_multi_vicuna_labels"],
        mm_encoder_outputs={"video": features},
    )
    _close(out.loss, "train_ibvision_multi_vicuna_loss", atol=LOSS_ATOL)
    _close(out.logits, "train_ibvision_multi_vicuna_logits", atol=LOGITS_ATOL)
