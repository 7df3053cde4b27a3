"""PEFT adapters: LoRA on the LLM (and optionally the Q-Formers), stage modules via `modules_to_save`; save ->
reload (`PeftModel.from_pretrained` and transformers' `load_adapter`) -> merge give identical logits; generation."""

import pytest
import torch
from _videollama_training import make_dataset, make_model_dir, tiny_processor
from peft import PeftModel, get_peft_model

from transformers_videollama import (
    VideoLlamaDataCollator,
    VideoLlamaForConditionalGeneration,
    freeze_for_training,
    load_training_data,
    lora_config,
)
from transformers_videollama.collator_videollama import IGNORE_INDEX


STAGE = ["video_qformer", "video_position_embedding", "video_projection"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("peft")
    model_dir = make_model_dir(tmp / "model", lm_head_scale=10.0)
    data = load_training_data("jsonl", make_dataset(tmp / "data", num_records=2))
    batch = VideoLlamaDataCollator(tiny_processor())([data[0], data[2]])  # a video and an image
    yield tmp, model_dir, batch
    torch.set_num_threads(threads)


def _base(model_dir):
    return VideoLlamaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


def _logits(model, batch):
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("lora_qformers", [False, True], ids=["llm", "llm+qformers"])
def test_lora_save_reload_merge_generate(setup, lora_qformers):
    tmp, model_dir, batch = setup
    model = _base(model_dir)
    freeze_for_training(model, STAGE)
    to_save = [m for m in STAGE if not (lora_qformers and m == "video_qformer")]
    peft_model = get_peft_model(model, lora_config(model, r=4, lora_qformers=lora_qformers, modules_to_save=to_save))
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("language_model.layers.0.self_attn.q_proj.lora_A" in n for n in names)
    assert (
        any("video_qformer.encoder.layer.0.crossattention.attention.query.lora_B" in n for n in names) == lora_qformers
    )
    assert any("video_projection.modules_to_save" in n for n in names)
    assert not any("model.qformer." in n or "vision_tower" in n for n in names)  # BLIP-2 side stays frozen

    # a trained adapter: move every trainable tensor (LoRA B starts at zero, which would hide bugs)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    peft_model.eval()
    expected = _logits(peft_model, batch)
    assert not torch.allclose(expected, _logits(_base(model_dir), batch), atol=1e-3)  # the adapter matters

    out = tmp / f"adapter-{lora_qformers}"
    peft_model.save_pretrained(out)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()

    reloaded = PeftModel.from_pretrained(_base(model_dir), out).eval()
    torch.testing.assert_close(_logits(reloaded, batch), expected, rtol=0, atol=1e-6)

    native = _base(model_dir)
    native.load_adapter(str(out))
    torch.testing.assert_close(_logits(native.eval(), batch), expected, rtol=0, atol=1e-6)

    merged = PeftModel.from_pretrained(_base(model_dir), out).merge_and_unload().eval()
    assert type(merged) is VideoLlamaForConditionalGeneration
    torch.testing.assert_close(_logits(merged, batch), expected, rtol=0, atol=1e-5)

    # generation with the adapter: prompt = the first sample up to its answer
    first_answer = int((batch["labels"][0] != IGNORE_INDEX).nonzero()[0])
    prompt = {
        "input_ids": batch["input_ids"][:1, :first_answer],
        "attention_mask": batch["attention_mask"][:1, :first_answer],
        "pixel_values_videos": batch["pixel_values_videos"][:1],
        "video_frames_mask": batch["video_frames_mask"][:1],
    }
    kwargs = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with_adapter = reloaded.generate(**prompt, **kwargs)
    assert with_adapter.shape == (1, first_answer + 4)
    assert torch.equal(with_adapter, merged.generate(**prompt, **kwargs))
