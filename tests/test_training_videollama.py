"""Fine-tuning through the example entry point on `transformers.Trainer`: stage presets and freezing, the audio
branch fed with frames, loss going down, frozen weights untouched, resuming, evaluation and throughput logs."""

import json

import pytest
import torch
from _reference import reference_inputs, reference_meta, reference_outputs, release_files
from _videollama_training import (
    make_dataset,
    make_model_dir,
    one_thread,  # noqa: F401  (autouse fixture)
    run_training,
    trainable_state,
)
from safetensors.torch import load_file

from transformers_videollama import (
    ImageBindVisionConfig,
    VideoLlamaDataCollator,
    VideoLlamaForConditionalGeneration,
    VideoLlamaProcessor,
    available_training_presets,
    build_videollama_tokenizer,
    convert_release,
    freeze_for_training,
    load_training_preset,
)
from transformers_videollama.training_videollama import trainable_parameter_names


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def _args(model_dir, data, out, *extra):
    return [
        "--model_name_or_path", model_dir, "--train_data", f"jsonl:{data}", "--output_dir", out,
        "--per_device_train_batch_size", "3", "--logging_steps", "1", "--save_strategy", "no",
        "--use_cpu", "--seed", "0", "--report_to", "none", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def _train_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


# ---------------------------------------------------------------------------------------------------------------
# Presets and freezing
# ---------------------------------------------------------------------------------------------------------------


def test_stage_presets_freeze_as_the_paper():
    assert available_training_presets() == ["audio-stage1", "audio-stage2", "vision-stage1", "vision-stage2"]
    from _videollama_training import tiny_training_config

    model = VideoLlamaForConditionalGeneration(tiny_training_config(imagebind_vision=True))
    for stage, branch in [("vision-stage1", "video"), ("audio-stage2", "audio")]:
        preset = load_training_preset(stage)
        trainable = freeze_for_training(model, preset["trainable_modules"])
        assert trainable == trainable_parameter_names(model)
        tops = {name.split(".")[1] for name in trainable}
        assert tops == {f"{branch}_qformer", f"{branch}_position_embedding", f"{branch}_projection"}
        assert f"model.{branch}_qformer.query_tokens" in trainable  # the learned queries train with their Q-Former
    with pytest.raises(ValueError, match=r"trainable_modules \['audio_qformr'\] match no parameter"):
        freeze_for_training(model, ["audio_qformr"])
    with pytest.raises(ValueError, match="Unknown training stage 'stage3'"):
        load_training_preset("stage3")


def test_audio_branch_fed_with_frames_reproduces_the_original_loss(tmp_path):
    """`imagebind_pixel_values` (the first-class input of the audio stages) + the collator's batch give the
    original's train_flag-1 loss (fixture A, `train_ibvision_multi_vicuna`)."""
    meta = reference_meta()
    ib = meta["imagebind"]
    vision = ImageBindVisionConfig(
        hidden_size=ib["vision_embed_dim"],
        num_hidden_layers=ib["vision_num_blocks"],
        num_attention_heads=ib["vision_num_heads"],
        intermediate_size=4 * ib["vision_embed_dim"],
        projection_dim=ib["out_embed_dim"],
    )
    from _reference import reference_config

    convert_release(
        release_files(),
        tmp_path,
        dtype="float32",
        config=reference_config(imagebind_vision_config=vision),
        include_imagebind_vision=True,
        save_processor=False,
        progress=False,
    )
    model = VideoLlamaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).eval()
    from _videollama_media import LLAMA
    from _videollama_training import decoded_video

    processor = VideoLlamaProcessor(
        tokenizer=build_videollama_tokenizer(LLAMA),
        num_video_query_tokens=meta["video_qformer"]["num_query_token"],
        num_audio_query_tokens=meta["audio_qformer"]["num_query_token"],
    )
    collator = VideoLlamaDataCollator(processor, label_masking="original", audio_branch_from_images=True)
    batch = collator(
        [{"media": decoded_video([0, 4, 8], 10.0), "conversations": c} for c in meta["train_conversations"]]
    )
    frames = reference_inputs()["imagebind_vision_input"].permute(0, 2, 1, 3, 4)  # (b, c, t, h, w) -> (b, t, c, ...)
    batch["imagebind_pixel_values"] = frames
    with torch.no_grad():
        out = model(**batch)
    expected = reference_outputs()["train_ibvision_multi_vicuna_loss"]
    assert abs(out.loss.item() - expected.item()) < 1e-5
    with pytest.raises(ValueError, match="either input_values .* or imagebind_pixel_values"):
        model(**batch, input_values=torch.zeros(2, 8, 1, 128, 204))


# ---------------------------------------------------------------------------------------------------------------
# Training runs (the example entry point, in process)
# ---------------------------------------------------------------------------------------------------------------


def test_lora_training_lowers_the_loss(tmp_path, data):
    model_dir = make_model_dir(tmp_path / "model", lm_head_scale=10.0)
    trainer = run_training(
        _args(model_dir, data, tmp_path / "out", "--stage", "vision-stage2", "--use_lora", "--lora_r", "8",
              "--lora_alpha", "16", "--max_steps", "36", "--learning_rate", "3e-3", "--lr_scheduler_type", "constant",
              "--eval_split_ratio", "0.25", "--eval_strategy", "steps", "--eval_steps", "18")
    )  # fmt: skip
    losses = _train_losses(trainer)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"LoRA, vision-stage2: mean loss of steps 1-5 {first:.3f} -> steps 32-36 {last:.3f}")
    assert last < 0.6 * first
    logs = trainer.state.log_history
    assert all("learning_rate" in e and "samples_per_second" in e for e in logs if "loss" in e and e["step"] > 1)
    evals = [e["eval_loss"] for e in logs if "eval_loss" in e]
    assert len(evals) >= 2 and evals[-1] < evals[0]  # the held-out split is evaluated and improves too
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["metrics"]["train_samples_per_second"] > 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_frozen_parameters_are_bit_identical(tmp_path, data):
    model_dir = make_model_dir(tmp_path / "model")
    before = load_file(model_dir / "model.safetensors")
    trainer = run_training(
        _args(model_dir, data, tmp_path / "out", "--stage", "vision-stage1", "--max_steps", "6",
              "--learning_rate", "1e-2", "--activation_checkpointing", "true")
    )  # fmt: skip
    after = load_file(tmp_path / "out" / "model.safetensors")
    trainable = set(trainable_parameter_names(trainer.model))
    assert trainable and all(n.split(".")[1] in ("video_qformer", "video_position_embedding", "video_projection")
                             for n in trainable)  # fmt: skip
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == trainable  # every trained tensor moved, every frozen one is bit-identical
    assert trainer.model.is_activation_checkpointing
    # entirely frozen blocks stayed in eval mode while training (no dropout in the frozen BLIP-2 Q-Former)
    assert trainer.model.training and not trainer.model.model.qformer.training
    assert trainer.model.model.video_qformer.training
    # and build no autograd graph: checkpointing's input-grad hook sits on the LLM's embeddings only
    seen = {}
    hooks = [
        module.register_forward_hook(lambda m, a, out, name=name: seen.update({name: out.requires_grad}))
        for name, module in [
            ("vit", trainer.model.model.vision_tower.embeddings),
            ("llm", trainer.model.model.language_model.embed_tokens),
        ]
    ]
    batch = trainer.data_collator([trainer.train_dataset[0]])
    trainer.model(**batch).loss.backward()
    for hook in hooks:
        hook.remove()
    assert seen == {"vit": False, "llm": True}


def test_projector_learning_rate_trains_the_projections_at_their_own_rate(tmp_path, data):
    """--projector_learning_rate: the projections' optimizer groups get that peak rate (0 keeps them where they
    started), everything else trains at --learning_rate under the same schedule."""
    model_dir = make_model_dir(tmp_path / "model")
    before = load_file(model_dir / "model.safetensors")
    common = ["--stage", "vision-stage1", "--max_steps", "3", "--learning_rate", "1e-2"]
    trainer = run_training(_args(model_dir, data, tmp_path / "out", *common, "--projector_learning_rate", "0"))
    after = load_file(tmp_path / "out" / "model.safetensors")
    changed = {n.split(".")[1] for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"video_qformer", "video_position_embedding"}  # the projection stayed put
    by_rate = {}
    for group in trainer.optimizer.param_groups:
        by_rate.setdefault(group["initial_lr"], set()).update(id(p) for p in group["params"])
    projection = {id(p) for p in trainer.model.model.video_projection.parameters()}
    assert set(by_rate) == {0.0, 1e-2} and by_rate[0.0] == projection
    # default: one rate for everything that trains
    trainer = run_training(_args(model_dir, data, tmp_path / "default", *common))
    assert {group["initial_lr"] for group in trainer.optimizer.param_groups} == {1e-2}
    with pytest.raises(ValueError, match="projector_learning_rate must be >= 0, got -1.0"):
        run_training(_args(model_dir, data, tmp_path / "bad", *common, "--projector_learning_rate", "-1"))
    # Trainer(optimizer_cls_and_kwargs=...) is honoured; optimizers that build their own groups are refused
    from transformers import TrainingArguments

    from transformers_videollama import VideoLlamaTrainer

    model = VideoLlamaForConditionalGeneration.from_pretrained(model_dir)
    freeze_for_training(model, load_training_preset("vision-stage1")["trainable_modules"])
    args = TrainingArguments(output_dir=str(tmp_path / "sgd"), learning_rate=1e-2, use_cpu=True, report_to="none")
    sgd = VideoLlamaTrainer(
        model=model, args=args, projector_learning_rate=1e-3, optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 1e-2})
    ).create_optimizer()
    assert isinstance(sgd, torch.optim.SGD) and {group["lr"] for group in sgd.param_groups} == {1e-2, 1e-3}
    own_groups = (torch.optim.SGD, {"lr": 1e-2, "params": list(model.parameters())})
    trainer = VideoLlamaTrainer(
        model=model, args=args, projector_learning_rate=1e-3, optimizer_cls_and_kwargs=own_groups
    )
    with pytest.raises(ValueError, match="projector_learning_rate does not combine with optimizer"):
        trainer.create_optimizer()


def test_resume_continues_at_the_right_step(tmp_path, data):
    model_dir = make_model_dir(tmp_path / "model")
    common = ["--stage", "vision-stage2", "--max_steps", "6", "--learning_rate", "1e-2", "--save_strategy", "steps",
              "--save_steps", "3", "--train_augmentation", "false"]  # fmt: skip
    full = run_training(_args(model_dir, data, tmp_path / "full", *common))
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    resumed = run_training(
        _args(model_dir, data, tmp_path / "resumed", *common, "--resume_from_checkpoint", tmp_path / "full" / "checkpoint-3")
    )  # fmt: skip
    # the restored state carries steps 1-3; the run itself trained steps 4-6 (so it saved only checkpoint-6)
    assert [e["step"] for e in resumed.state.log_history if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert resumed.state.global_step == 6
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-6"]
    # same data order, same RNG: steps 4-6 are the uninterrupted run's, to float precision
    assert _train_losses(resumed) == pytest.approx(_train_losses(full), abs=1e-6)
    a, b = trainable_state(full), trainable_state(resumed)
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


def test_audio_stage_trains_the_audio_branch_on_frames(tmp_path, data):
    model_dir = make_model_dir(tmp_path / "model", imagebind_vision=True)
    before = load_file(model_dir / "model.safetensors")
    run_training(_args(model_dir, data, tmp_path / "out", "--stage", "audio-stage2", "--max_steps", "3",
                       "--learning_rate", "1e-2"))  # fmt: skip
    after = load_file(tmp_path / "out" / "model.safetensors")
    changed = {n.split(".")[1] for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"audio_qformer", "audio_position_embedding", "audio_projection"}
    # a model without ImageBind's vision trunk is refused with the fix in the message
    with pytest.raises(ValueError, match="--with-imagebind-vision"):
        run_training(_args(make_model_dir(tmp_path / "plain"), data, tmp_path / "o2", "--stage", "audio-stage1"))


# ---------------------------------------------------------------------------------------------------------------
# Memoised frozen encoders
# ---------------------------------------------------------------------------------------------------------------


def test_frozen_encoder_cache_serves_what_the_encoders_compute():
    from _videollama_training import tiny_training_config

    from transformers_videollama import cache_frozen_encoders

    torch.manual_seed(0)
    model = VideoLlamaForConditionalGeneration(tiny_training_config()).eval()
    freeze_for_training(model, load_training_preset("vision-stage2")["trainable_modules"])
    inner = model.model
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, 3, size, size)
    clips = torch.randn(2, 2, 1, 128, 204)
    expected_frames, _ = inner._frame_query_tokens(pixels)
    expected_audio = inner.get_audio_features(clips).pooler_output

    cache = cache_frozen_encoders(model)
    for _ in range(2):
        frames, _ = inner._frame_query_tokens(pixels)
        torch.testing.assert_close(frames, expected_frames, rtol=0, atol=1e-6)
        torch.testing.assert_close(inner.get_audio_features(clips).pooler_output, expected_audio, rtol=0, atol=1e-6)
    stats = cache.stats()
    assert stats["frames"] == {"hits": 6, "misses": 6} and stats["audio"] == {"hits": 4, "misses": 4}
    assert stats["entries"] == 10 and stats["bytes"] > 0

    # keyed by content: one changed frame is the only miss, and it gets its own (new) output
    changed = pixels.clone()
    changed[1, 2] = torch.randn(3, size, size)
    frames, _ = inner._frame_query_tokens(changed)
    assert cache.stats()["frames"] == {"hits": 11, "misses": 7}
    cache.remove()
    fresh, _ = inner._frame_query_tokens(changed)
    torch.testing.assert_close(frames, fresh, rtol=0, atol=1e-6)
    assert "_encode_frames" not in inner.__dict__  # the model's own methods are back

    # encoders in training mode (dropout on) are run, never served nor stored
    cache = cache_frozen_encoders(model)
    model.train()
    inner._frame_query_tokens(pixels)
    assert cache.stats()["frames"] == {"hits": 0, "misses": 0} and cache.stats()["entries"] == 0
    model.eval()
    cache.remove()

    # a full cache stops growing and still answers correctly
    small = cache_frozen_encoders(model, max_bytes=1)
    frames, _ = inner._frame_query_tokens(pixels)
    torch.testing.assert_close(frames, expected_frames, rtol=0, atol=1e-6)
    assert small.stats()["entries"] == 0
    small.remove()


def test_frozen_encoder_cache_leaves_training_encoders_alone():
    from _videollama_training import tiny_training_config

    from transformers_videollama import cache_frozen_encoders

    model = VideoLlamaForConditionalGeneration(tiny_training_config())
    freeze_for_training(model, ["audio_tower", "audio_qformer"])  # the audio trunk trains: only frames are cached
    cache = cache_frozen_encoders(model)
    assert "_encode_frames" in model.model.__dict__ and "_encode_audio_clips" not in model.model.__dict__
    cache.remove()
    freeze_for_training(model, ["vision_tower", "audio_tower"])
    with pytest.raises(ValueError, match=r"no frozen encoder to cache: frames \(vision_tower trains\); audio"):
        cache_frozen_encoders(model)


def _same_training_with(tmp_path, flag: str, with_image: bool):
    """Three epochs plain and three with `flag` on, same data and seed: the losses and trained weights must agree."""
    data = make_dataset(tmp_path / "data", num_records=4, with_image=with_image, with_audio=True)
    model_dir = make_model_dir(tmp_path / "model")
    common = ["--stage", "vision-stage2", "--num_train_epochs", "3", "--learning_rate", "1e-2",
              "--train_augmentation", "false", "--dataloader_num_workers", "0"]  # fmt: skip
    plain = run_training(_args(model_dir, data, tmp_path / "plain", *common))
    other = run_training(_args(model_dir, data, tmp_path / "other", *common, flag, "true"))
    assert _train_losses(other) == pytest.approx(_train_losses(plain), abs=1e-5)
    a, b = trainable_state(plain), trainable_state(other)
    assert all(torch.allclose(a[n], b[n], atol=1e-5) for n in a)
    return model_dir, data, common, plain, other


def test_training_with_cached_encoders_equals_training_without(tmp_path):
    model_dir, data, _, _, _ = _same_training_with(tmp_path, "--cache_frozen_encoders", with_image=False)
    stats = json.loads((tmp_path / "other" / "train_summary.json").read_text())["metrics"]["frozen_encoder_cache"]
    # 4 videos x 4 frames and 4 audios x 8 clips a epoch: each distinct input is computed once, in the first epoch
    # (identical frames / clips, e.g. the same 1 s tone in every video, only once), and served in the next two
    frames, audio = stats["frames"], stats["audio"]
    assert frames["hits"] + frames["misses"] == 48 and frames["hits"] >= 32
    assert audio["hits"] + audio["misses"] == 96 and audio["hits"] >= 64
    assert frames["misses"] + audio["misses"] == stats["entries"]
    with pytest.raises(ValueError, match="--cache_frozen_encoders needs --train_augmentation False"):
        run_training(_args(model_dir, data, tmp_path / "bad", "--cache_frozen_encoders", "true"))


def test_training_on_precomputed_features_equals_training_on_media(tmp_path):
    """`--precompute_frozen_features`: each record decoded and encoded once, then epochs on ids + frozen outputs;
    the same losses and weights as decoding and encoding every step."""
    model_dir, data, common, plain, pre = _same_training_with(
        tmp_path, "--precompute_frozen_features", with_image=True
    )
    features = pre.train_dataset
    assert len(features) == len(plain.train_dataset) and {"frame_query_embeds", "labels"} <= set(features[0])
    assert any("audio_clip_embeds" in item for item in features.items)
    with pytest.raises(ValueError, match="training augmentation is on"):
        run_training(_args(model_dir, data, tmp_path / "bad", "--precompute_frozen_features", "true"))
    with pytest.raises(ValueError, match="one of --precompute_frozen_features and --cache_frozen_encoders"):
        run_training(
            _args(model_dir, data, tmp_path / "bad2", *common, "--precompute_frozen_features", "true",
                  "--cache_frozen_encoders", "true")
        )  # fmt: skip


def test_precomputed_features_collator_pads_frames_and_refuses_frozen_encoders_that_train():
    from _videollama_training import tiny_processor, tiny_training_config

    from transformers_videollama import PrecomputedFeaturesCollator, precompute_frozen_features

    q, d = 4, 8
    items = [
        {"input_ids": torch.tensor([1, 2, 3]), "attention_mask": torch.ones(3, dtype=torch.long),
         "labels": torch.tensor([-100, 2, 3]), "frame_query_embeds": torch.ones(1, 2, q, d),
         "audio_clip_embeds": torch.ones(1, 8, d)},
        {"input_ids": torch.tensor([1, 5]), "attention_mask": torch.ones(2, dtype=torch.long),
         "labels": torch.tensor([-100, 5]), "frame_query_embeds": 2 * torch.ones(1, 3, q, d)},
    ]  # fmt: skip
    batch = PrecomputedFeaturesCollator(pad_token_id=0)(items)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 5, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["frame_query_embeds"].shape == (2, 3, q, d)
    assert batch["video_frames_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["frame_query_embeds"][0, 2].abs().sum() == 0 and batch["audio_clip_embeds"].shape == (1, 8, d)

    with pytest.raises(ValueError, match="audio tracks with different clip counts in one batch"):
        PrecomputedFeaturesCollator(pad_token_id=0)([items[0], dict(items[1], audio_clip_embeds=torch.ones(1, 4, d))])

    model = VideoLlamaForConditionalGeneration(tiny_training_config())
    freeze_for_training(model, ["qformer", "video_qformer"])
    with pytest.raises(ValueError, match="qformer trains, so its outputs change every step"):
        precompute_frozen_features(model, [], VideoLlamaDataCollator(tiny_processor()))
    freeze_for_training(model, ["video_qformer"])
    with pytest.raises(ValueError, match="does not cover the audio branch fed with frames"):
        precompute_frozen_features(model, [], VideoLlamaDataCollator(tiny_processor(), audio_branch_from_images=True))
    # a caption prompt is drawn anew every epoch: refused before anything is decoded
    prompts = VideoLlamaDataCollator(tiny_processor(), caption_prompts=["<ImageHere> Describe it."])
    with pytest.raises(ValueError, match="caption records get a caption prompt drawn anew every epoch"):
        precompute_frozen_features(model, [{"video": "never-read.mp4", "caption": "a red circle"}], prompts)


def _items_equal(a, b) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(x[k].equal(y[k]) for k in x) for x, y in zip(a, b))


def test_precompute_cache_serves_a_later_run_without_decoding(tmp_path, caplog):
    """`precompute_frozen_features(cache_dir=...)`: a later call on the same files is served from the stored outputs,
    bit-identical to computing them, without decoding (the files' bytes zeroed, size and time kept, still serve);
    other encoder weights, a touched file or an unreadable entry are computed again."""
    import logging
    import os

    from _videollama_training import tiny_processor, tiny_training_config

    from transformers_videollama import precompute_frozen_features

    data = make_dataset(tmp_path / "data", num_records=3, with_image=True, with_audio=True)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    for record in records:
        for key in ("video", "image"):
            if key in record:
                record[key] = str(data.parent / record[key])
    records.append(dict(records[0], audio=False))  # the same video without its sound: one stored entry serves both
    model = VideoLlamaForConditionalGeneration(tiny_training_config()).eval()
    freeze_for_training(model, ["video_qformer"])
    collator = VideoLlamaDataCollator(tiny_processor())
    cache = tmp_path / "cache"

    def run():
        return precompute_frozen_features(model, records, collator, batch_size=2, cache_dir=cache)

    plain = precompute_frozen_features(model, records, collator, batch_size=2)
    cold = run()
    # the last record's video was stored with the first batch: already served in the same call
    assert (cold.hits, cold.misses) == (1, 4) and _items_equal(cold.items, plain.items)
    assert len(list(cache.glob("*.safetensors"))) == 7  # 4 videos / images + 3 audio tracks
    warm = run()
    assert (warm.hits, warm.misses) == (5, 0) and _items_equal(warm.items, plain.items)

    # other audio-trunk weights: every record with sound is computed again, the rest still served
    weight = model.model.audio_tower.state_dict()[next(iter(model.model.audio_tower.state_dict()))]
    original = weight.clone()
    with torch.no_grad():
        weight.add_(1.0)
    changed = run()
    assert (changed.hits, changed.misses) == (2, 3)
    with torch.no_grad():
        weight.copy_(original)
    # a touched file (new modification time): computed again, then serving its other record (a later batch)
    clip = records[0]["video"]
    os.utime(clip, ns=(os.stat(clip).st_atime_ns, os.stat(clip).st_mtime_ns + 10**9))
    touched = run()
    assert (touched.hits, touched.misses) == (4, 1) and _items_equal(touched.items, plain.items)
    # unreadable entries (cut short by hand): a warning, and their records are computed (and stored) again
    for entry in cache.glob("*.safetensors"):
        entry.write_bytes(entry.read_bytes()[:40])
    with caplog.at_level(logging.WARNING, logger="transformers_videollama.training_videollama"):
        mended = run()
    assert "cache entry unreadable" in caplog.text and _items_equal(mended.items, plain.items)
    assert mended.hits + mended.misses == 5 and mended.misses >= 1

    # the same entries serve records rendered with the chat template (the text needs only the stored frame indices)
    chat = VideoLlamaDataCollator(tiny_processor(), prompt_format="chat_template")
    chat_records = [r for r in records if "video" in r]  # the chat template puts media before the first question
    chat_plain = precompute_frozen_features(model, chat_records, chat, batch_size=2)
    chat_served = precompute_frozen_features(model, chat_records, chat, batch_size=2, cache_dir=cache)
    assert chat_served.hits == 4 and _items_equal(chat_served.items, chat_plain.items)

    # nothing is decoded on a hit: with every media file zeroed (same size and time) the stored outputs still serve
    for record in records[:4]:
        path = record.get("video") or record["image"]
        stat = os.stat(path)
        with open(path, "wb") as handle:
            handle.write(bytes(stat.st_size))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    served = run()
    assert (served.hits, served.misses) == (5, 0) and _items_equal(served.items, plain.items)


def test_training_entry_point_reuses_the_frozen_features_cache(tmp_path):
    """`--frozen_features_cache`: the second run (stage 2 after stage 1 in the recipe) takes every record's frozen
    outputs from the first and trains exactly as without it; refused without --precompute_frozen_features."""
    data = make_dataset(tmp_path / "data", num_records=4, with_image=True, with_audio=True)
    model_dir = make_model_dir(tmp_path / "model")
    common = ["--stage", "vision-stage2", "--num_train_epochs", "2", "--learning_rate", "1e-2",
              "--train_augmentation", "false", "--dataloader_num_workers", "0", "--precompute_frozen_features", "true",
              "--frozen_features_cache", str(tmp_path / "cache")]  # fmt: skip
    first = run_training(_args(model_dir, data, tmp_path / "first", *common))
    second = run_training(_args(model_dir, data, tmp_path / "second", *common))
    summaries = [json.loads((tmp_path / n / "train_summary.json").read_text()) for n in ("first", "second")]
    assert [s["metrics"]["precomputed_features"] for s in summaries] == [
        {"examples": 5, "cache_hits": 0},
        {"examples": 5, "cache_hits": 5},
    ]
    assert _train_losses(second) == _train_losses(first)
    with pytest.raises(ValueError, match="--frozen_features_cache needs --precompute_frozen_features True"):
        run_training(
            _args(model_dir, data, tmp_path / "bad", "--train_augmentation", "false",
                  "--frozen_features_cache", str(tmp_path / "cache"))
        )  # fmt: skip
