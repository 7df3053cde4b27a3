"""Quickstart: the whole Video-LLaMA path on this machine, with no downloads.

1. converts the bundled release-format files (the original release layout, with tiny random weights, made by the
   original Video-LLaMA code; `tests/fixtures/reference/`) into a Hugging Face folder,
2. loads it back through the Auto classes,
3. checks the converted model against the original implementation's stored outputs,
4. asks a real video (with its sound) a question: decode with PyAV, prompt in the original demo format, generate.

The weights are random, so the generated text is noise; with the real release (see README, "Converting the original
release") the same code answers questions about the video. Run: `python examples/quickstart.py`.
"""

import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

import transformers_videollama as tv


ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "tests" / "fixtures" / "reference"
VIDEO = ROOT / "tests" / "fixtures" / "media" / "dog_barking.mp4"


def tiny_release_config() -> tv.VideoLlamaConfig:
    """The fixture's tiny architecture (for the real release the converter needs no config: it knows it)."""
    return tv.VideoLlamaConfig.from_json_file(str(Path(__file__).with_name("tiny_release_config.json")))


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        # 1. convert the release files exactly as released
        start = time.perf_counter()
        files = tv.ReleaseFiles(
            eva_vit=RELEASE / "eva_vit_g.pth",
            blip2=RELEASE / "blip2_pretrained_flant5xxl.pth",
            imagebind=RELEASE / "imagebind_huge.pth",
            llama=RELEASE / "llama",
            vl_checkpoint=RELEASE / "VL_checkpoint.pth",
            al_checkpoint=RELEASE / "AL_checkpoint.pth",
        )
        folder = tv.convert_release(files, tmp, dtype="float32", config=tiny_release_config(), chat_format="vicuna")
        print(f"[1] converted the release into {folder} in {time.perf_counter() - start:.1f} s")

        # 2. load through the Auto classes
        model = AutoModelForImageTextToText.from_pretrained(folder).eval()
        processor = AutoProcessor.from_pretrained(folder)
        print(f"[2] loaded {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters)")

        # 3. parity with the original implementation (its stored outputs for the fixture's inputs)
        inputs, outputs = load_file(RELEASE / "inputs.safetensors"), load_file(RELEASE / "outputs.safetensors")
        with torch.no_grad():
            video = model.get_video_features(inputs["video"].permute(0, 2, 1, 3, 4)).pooler_output
            audio = model.get_audio_features(inputs["audio"]).pooler_output
        video_diff = (video - outputs["video_inputs_llama"]).abs().max().item()
        audio_diff = (audio - outputs["audio_inputs_llama"]).abs().max().item()
        print(f"[3] max |ours - original|: video features {video_diff:.1e}, audio features {audio_diff:.1e}")

        # 4. a real video with its audio track, in the original demo's prompt format
        conversation = [
            {
                "role": "user",
                "content": [
                    {"type": "video", "path": str(VIDEO)},
                    {"type": "text", "text": "What is happening in this video?"},
                ],
            }
        ]
        start = time.perf_counter()
        batch = processor.apply_chat_template(
            conversation,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            load_audio_from_video=True,
        )
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True, load_audio_from_video=True)
        print(f"[4] prompt: {processor.original_prompt(prompt)!r}")
        print(
            f"    inputs: input_ids {tuple(batch['input_ids'].shape)}, pixel_values_videos "
            f"{tuple(batch['pixel_values_videos'].shape)}, input_values {tuple(batch['input_values'].shape)} "
            f"({time.perf_counter() - start:.2f} s)"
        )
        with torch.no_grad():
            generated = model.generate(**batch, max_new_tokens=12, do_sample=False)
        answer = processor.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)[0]
        print(f"    answer (random weights, so noise): {answer!r}")


if __name__ == "__main__":
    main()
