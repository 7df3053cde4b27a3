"""Unit tests of the model on a tiny random architecture (parity with the original lives in test_parity_*)."""

import pytest
import torch
from _reference import tiny_config
from transformers import AutoModel, AutoModelForImageTextToText, AutoModelForMultimodalLM

from transformers_videollama import VideoLlamaForConditionalGeneration, VideoLlamaModel


N_VIDEO, N_AUDIO = 6, 3  # query tokens of tiny_config()
VIDEO, AUDIO = 99, 100  # placeholder ids of tiny_config()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VideoLlamaForConditionalGeneration(tiny_config()).eval()


def _video(n=1, frames=3, seed=0):
    return torch.randn(n, frames, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def _audio(n=1, clips=8, seed=1):
    return torch.randn(n, clips, 1, 128, 204, generator=torch.Generator().manual_seed(seed))


def _ids(*parts):
    """Build one row of input_ids from text ids and ('video'|'audio') placeholders."""
    row = []
    for part in parts:
        if part == "video":
            row += [VIDEO] * N_VIDEO
        elif part == "audio":
            row += [AUDIO] * N_AUDIO
        else:
            row += list(part)
    return row


def test_class_stack_and_attribute_names(model):
    m = model.model
    assert isinstance(m, VideoLlamaModel)
    for name in (
        "vision_tower",
        "qformer",
        "video_position_embedding",
        "video_qformer",
        "video_projection",
        "audio_tower",
        "audio_position_embedding",
        "audio_qformer",
        "audio_projection",
        "language_model",
    ):
        assert hasattr(m, name), name
    assert model.lm_head.out_features == 99
    # query tokens live inside the Q-Former modules, not on the top model
    assert m.qformer.query_tokens.shape == (1, 4, 32)
    assert not any("." not in name.removeprefix("model.") for name, _ in model.named_parameters() if "query" in name)


def test_feature_shapes(model):
    with torch.no_grad():
        video = model.get_video_features(_video(n=2)).pooler_output
        audio = model.get_audio_features(_audio(n=2)).pooler_output
    assert video.shape == (2, N_VIDEO, 32)
    assert audio.shape == (2, N_AUDIO, 32)


def test_joint_audio_visual_requires_one_clip_per_frame(model):
    with pytest.raises(ValueError, match="one audio clip per frame"):
        model.get_audio_visual_features(_video(frames=3), _audio(clips=8))


def test_placeholder_count_mismatch_states_both_counts(model):
    input_ids = torch.tensor([_ids([1, 5], [VIDEO] * (N_VIDEO - 1), [7])])
    with pytest.raises(ValueError, match=r"5 video placeholder tokens .* provide 6 tokens \(1 video\(s\) x 6"):
        model(input_ids=input_ids, pixel_values_videos=_video())
    input_ids = torch.tensor([_ids([1], "audio", [7], "audio")])
    with pytest.raises(ValueError, match=r"6 audio placeholder tokens .* provide 3 tokens"):
        model(input_ids=input_ids, input_values=_audio())


def test_placeholders_without_media_are_an_error(model):
    with pytest.raises(ValueError, match="no pixel_values_videos"):
        model(input_ids=torch.tensor([_ids([1], "video")]))
    with pytest.raises(ValueError, match="no input_values"):
        model(input_ids=torch.tensor([_ids([1], "audio")]))


def test_too_many_frames_is_a_clear_error(model):
    with pytest.raises(ValueError, match="9 frames .* max_frame_pos=8"):
        model.get_video_features(_video(frames=9))


def test_bad_video_rank_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"pixel_values_videos must have shape .* got \(3, 28, 28\)"):
        model.get_video_features(torch.zeros(3, 28, 28))


def test_media_spliced_in_placeholder_order(model):
    """Two items: one with audio then video, one with video only; features follow placeholder order."""
    videos, audios = _video(n=2), _audio(n=1)
    rows = [_ids([1, 11], "audio", [12], "video", [13]), _ids([1, 14, 15], "video", [16, 17, 18] + [0] * 1)]
    with torch.no_grad():
        out = model(input_ids=torch.tensor(rows), pixel_values_videos=videos, input_values=audios)
        video_features = model.get_video_features(videos).pooler_output
        audio_features = model.get_audio_features(audios).pooler_output
    assert torch.equal(out.video_hidden_states, video_features)
    assert torch.equal(out.audio_hidden_states, audio_features)
    # the same item alone gives the same logits as inside the mixed batch
    with torch.no_grad():
        alone = model(input_ids=torch.tensor(rows[1:]), pixel_values_videos=videos[1:]).logits
    torch.testing.assert_close(out.logits[1], alone[0], atol=1e-5, rtol=0)


def test_frame_padding_mask_gives_the_unpadded_result(model):
    """A 2-frame video padded to 3 frames with video_frames_mask equals the 2-frame video alone."""
    short = _video(frames=2)
    padded = torch.cat([short, 5 * _video(frames=1, seed=7)], dim=1)  # a loud padding frame, so it would matter
    with torch.no_grad():
        expected = model.get_video_features(short).pooler_output
        masked = model.get_video_features(padded, video_frames_mask=torch.tensor([[1, 1, 0]])).pooler_output
        unmasked = model.get_video_features(padded).pooler_output
    masked_error = (masked - expected).abs().max()
    unmasked_error = (unmasked - expected).abs().max()
    assert masked_error < 1e-6
    assert unmasked_error > 100 * max(masked_error, 1e-8)  # without the mask the padding frame leaks in


def test_loss_ignores_masked_labels(model):
    input_ids = torch.tensor([_ids([1, 5], "video", [6, 7, 8])])
    labels = input_ids.clone()
    labels[:, : 2 + N_VIDEO] = -100
    out = model(input_ids=input_ids, pixel_values_videos=_video(), labels=labels)
    logits = out.logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits[1 + N_VIDEO :], input_ids[0, 2 + N_VIDEO :])
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.model.video_projection.weight.grad is not None
    model.zero_grad()


def test_eager_and_sdpa_agree():
    torch.manual_seed(0)
    eager = VideoLlamaForConditionalGeneration(tiny_config()).eval()
    eager.set_attn_implementation("eager")
    sdpa = VideoLlamaForConditionalGeneration(tiny_config()).eval()
    sdpa.load_state_dict(eager.state_dict())
    sdpa.set_attn_implementation("sdpa")
    assert sdpa.model.audio_tower.config._attn_implementation == "sdpa"
    assert eager.model.audio_tower.config._attn_implementation == "eager"
    inputs = {
        "input_ids": torch.tensor([_ids([1, 5], "audio", [6], "video", [7, 8])]),
        "pixel_values_videos": _video(),
        "input_values": _audio(),
    }
    with torch.no_grad():
        torch.testing.assert_close(eager(**inputs).logits, sdpa(**inputs).logits, atol=1e-5, rtol=0)


def test_dtype_reports_the_language_model_dtype():
    model = VideoLlamaForConditionalGeneration(tiny_config()).to(torch.bfloat16)
    assert model.dtype == torch.bfloat16 == model.model.language_model.dtype
    with torch.no_grad():
        out = model(input_ids=torch.tensor([_ids([1], "video", [5])]), pixel_values_videos=_video())
    assert out.logits.dtype == torch.bfloat16


def test_vision_only_variant_rejects_audio():
    model = VideoLlamaForConditionalGeneration(tiny_config(has_audio_branch=False)).eval()
    assert not hasattr(model.model, "audio_tower")
    with pytest.raises(ValueError, match="no audio branch"):
        model.get_audio_features(_audio())


def test_generate_with_video_and_audio(model):
    inputs = {
        "input_ids": torch.tensor([_ids([1, 5], "audio", [6], "video", [7])]),
        "pixel_values_videos": _video(),
        "input_values": _audio(),
    }
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    out = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert (out[:, inputs["input_ids"].shape[1] :] < 99).all()  # placeholders can never be generated


def test_precomputed_frozen_outputs_stand_in_for_the_media(model):
    """`frame_query_embeds` / `audio_clip_embeds` (the frozen encoders' outputs, as `precompute_frozen_features`
    stores them) give the same features, logits and generated ids as the frames and clips they came from."""
    videos, audios = _video(n=2), _audio(n=1)
    rows = torch.tensor([_ids([1, 11], "audio", [12], "video", [13]), _ids([1, 14, 15], "video", [16, 17, 18, 0])])
    inner = model.model
    with torch.no_grad():
        frames = inner._encode_frames(videos.flatten(0, 1)).view(2, 3, *inner.qformer.query_tokens.shape[1:])
        clips = inner._encode_audio_clips(audios)
        expected = model(input_ids=rows, pixel_values_videos=videos, input_values=audios)
        got = model(input_ids=rows, frame_query_embeds=frames, audio_clip_embeds=clips)
    torch.testing.assert_close(got.video_hidden_states, expected.video_hidden_states, atol=0, rtol=0)
    torch.testing.assert_close(got.audio_hidden_states, expected.audio_hidden_states, atol=0, rtol=0)
    torch.testing.assert_close(got.logits, expected.logits, atol=0, rtol=0)

    one = {"input_ids": rows[:1], "attention_mask": torch.ones_like(rows[:1])}
    kwargs = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    from_media = model.generate(**one, pixel_values_videos=videos[:1], input_values=audios, **kwargs)
    from_outputs = model.generate(**one, frame_query_embeds=frames[:1], audio_clip_embeds=clips, **kwargs)
    assert torch.equal(from_media, from_outputs)

    with pytest.raises(ValueError, match="exactly one of pixel_values_videos or frame_query_embeds"):
        model.get_video_features(videos, frame_query_embeds=frames)
    with pytest.raises(ValueError, match=r"frame_query_embeds must have shape .* got \(2, 3, 5\)"):
        model.get_video_features(frame_query_embeds=torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="exactly one of input_values or audio_clip_embeds"):
        model.get_audio_features(audios, audio_clip_embeds=clips)
    with pytest.raises(ValueError, match=r"audio_clip_embeds must have shape \(num_audios, num_clips, \d+\)"):
        model.get_audio_features(audio_clip_embeds=torch.zeros(1, 8, 3))
    with pytest.raises(ValueError, match="Pass one of pixel_values_videos, frame_query_embeds"):
        model.generate(**one, pixel_values_videos=videos[:1], frame_query_embeds=frames[:1], **kwargs)
    with pytest.raises(ValueError, match="Pass one of input_values, audio_clip_embeds or pre-computed audio"):
        model.generate(**one, frame_query_embeds=frames[:1], input_values=audios, audio_clip_embeds=clips, **kwargs)


def test_auto_classes(tmp_path, model):
    model.save_pretrained(tmp_path)
    for auto in (AutoModelForImageTextToText, AutoModelForMultimodalLM):
        loaded = auto.from_pretrained(tmp_path)
        assert isinstance(loaded, VideoLlamaForConditionalGeneration)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, VideoLlamaModel)
    torch.testing.assert_close(base.video_projection.weight, model.model.video_projection.weight)


def test_device_map_with_disk_offload_matches(tmp_path, model):
    """`device_map="auto"` splits only at `_no_split_modules` boundaries and gives the same logits."""
    import warnings

    model.save_pretrained(tmp_path / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. accelerate warning about unmatched device_map keys
        offloaded = VideoLlamaForConditionalGeneration.from_pretrained(
            tmp_path / "model", device_map="auto", max_memory={"cpu": "300KB"}, offload_folder=tmp_path / "offload"
        )
    placement = offloaded.hf_device_map
    assert "disk" in placement.values()
    assert not any(k.startswith("model.video_qformer.") for k in placement)  # a Q-Former is never split
    inputs = {"input_ids": torch.tensor([_ids([1, 5], "video", [7])]), "pixel_values_videos": _video()}
    with torch.no_grad():
        torch.testing.assert_close(offloaded(**inputs).logits, model(**inputs).logits)


def test_fresh_query_tokens_are_initialised():
    """Blip2's post_init runs before the queries exist; a fresh model must still draw them (all-zero queries make
    a Q-Former's first LayerNorm degenerate and its gradients explode)."""
    model = VideoLlamaForConditionalGeneration(tiny_config())
    for name in ("qformer", "video_qformer", "audio_qformer"):
        std = getattr(model.model, name).query_tokens.std().item()
        assert 0.01 < std < 0.03, (name, std)  # normal(0, initializer_range=0.02)


def test_input_errors_name_the_argument(model):
    with pytest.raises(ValueError, match=r"input_values must have shape .* got \(8, 1, 128, 204\)"):
        model.get_audio_features(torch.zeros(8, 1, 128, 204))
    with pytest.raises(ValueError, match="9 audio clips .* max_audio_clips=8"):
        model.get_audio_features(_audio(clips=9))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(input_ids=torch.tensor([[1, 2]]), inputs_embeds=torch.zeros(1, 2, 32))
    with pytest.raises(ValueError, match="Multimodal inputs need input_ids"):
        model(inputs_embeds=torch.zeros(1, 2, 32), pixel_values_videos=_video())
    with pytest.raises(ValueError, match="input_values .* or imagebind_pixel_values .* not both"):
        model(input_ids=torch.tensor([_ids([1], "audio")]), input_values=_audio(), imagebind_pixel_values=_video())
    with pytest.raises(ValueError, match="no ImageBind vision trunk"):
        model.model.get_audio_features_from_images(_video())


def test_decode_step_linear_matches_nn_linear():
    """Products with a few rows (decode steps), float32 on the CPU, take the blocked form and equal `nn.Linear`'s;
    everything else is `nn.Linear.forward` itself."""
    from unittest import mock

    from transformers_videollama.modeling_videollama import DecodeStepLinear

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        for bias in (False, True):
            layer = DecodeStepLinear(64, 1000, bias=bias)
            with torch.no_grad():
                for shape in [(1, 1, 64), (3, 1, 64), (2, 4, 64), (8, 64)]:  # up to 8 rows: blocked
                    hidden = torch.randn(shape)
                    with mock.patch.object(torch.nn.Linear, "forward", side_effect=AssertionError("nn.Linear path")):
                        out = layer(hidden)
                    assert out.shape == (*shape[:-1], 1000)
                    torch.testing.assert_close(out, torch.nn.functional.linear(hidden, layer.weight, layer.bias))
                # not a decode step, or not float32 on the CPU: nn.Linear.forward, bit for bit
                hidden = torch.randn(1, 9, 64)
                assert torch.equal(layer(hidden), torch.nn.functional.linear(hidden, layer.weight, layer.bias))
                odd = DecodeStepLinear(64, 999, bias=bias)  # no block split of 999 rows over 2 threads
                assert torch.equal(odd(hidden[:, :1]), torch.nn.functional.linear(hidden[:, :1], odd.weight, odd.bias))
                half = DecodeStepLinear(64, 1000, bias=bias).to(torch.bfloat16)
                x = hidden[:, :1].bfloat16()
                assert torch.equal(half(x), torch.nn.functional.linear(x, half.weight, half.bias))
            hidden = torch.randn(1, 1, 64, requires_grad=True)  # autograd on (training): nn.Linear.forward
            out = layer(hidden)
            assert torch.equal(out, torch.nn.functional.linear(hidden, layer.weight, layer.bias))
            out.sum().backward()
            assert hidden.grad is not None and layer.weight.grad is not None
        torch.set_num_threads(1)  # one thread: nothing to split over
        with torch.no_grad(), mock.patch.object(torch.nn.Linear, "forward", return_value="nn.Linear path"):
            assert layer(torch.randn(1, 64)) == "nn.Linear path"
    finally:
        torch.set_num_threads(threads)


def test_language_model_uses_decode_step_linears_with_the_same_greedy_ids(model):
    from transformers_videollama.modeling_videollama import DecodeStepLinear

    linears = [m for m in model.model.language_model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is DecodeStepLinear for m in linears) and type(model.lm_head) is DecodeStepLinear
    assert all(
        type(m) is torch.nn.Linear for m in model.model.video_qformer.modules() if isinstance(m, torch.nn.Linear)
    )
    plain = VideoLlamaForConditionalGeneration(tiny_config()).eval()
    plain.load_state_dict(model.state_dict())  # same names and shapes
    for m in [*plain.model.language_model.modules(), plain.lm_head]:
        if type(m) is DecodeStepLinear:
            m.__class__ = torch.nn.Linear
    inputs = {"input_ids": torch.tensor([_ids([1, 5], "video", [7])]), "pixel_values_videos": _video()}
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    out = model.generate(**inputs, **kwargs, output_logits=True, return_dict_in_generate=True)
    ref = plain.generate(**inputs, **kwargs, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(ref.logits), rtol=1e-5, atol=1e-5)
