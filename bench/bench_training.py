"""Video-LLaMA training benchmark at the "small" config (issue #5): throughput and peak memory per training mode.

A benchmark, not a timed test: `python bench/bench_training.py [--steps N] [--batch-size B]` prints a markdown table.
Random weights, `transformers.Trainer` on the CPU (`use_cpu=True`, float32, 2 threads), the model of
`bench_videollama.small_config()` (EVA ViT 384x6, Q-Formers 256, LLaMA 512x4, vocab 32000, 224 px, 8 frames).

Each sample is a stage-2 video instruction: 8 frames of 224x224, a 106-position prompt (the demo prompt layout of
`bench_videollama.make_inputs`, 32 video placeholders, its audio slot as text) and a 24-token supervised answer. Samples are already
decoded tensors, so the numbers are the model's training step (forward, backward, optimizer) plus Trainer overhead,
not video decoding (the collator decodes with PyAV; see bench_preprocessing.py for its cost).

Modes:
    stage       the paper's freezing (vision-stage2 preset): video Q-Former + queries, frame positions, projection train
    lora        the same modules via `modules_to_save` + LoRA r=16 on the LLM's attention and MLP projections
    full        everything trains (for scale; not a recipe the paper used)
each with and without activation checkpointing (`TrainingArguments(activation_checkpointing=True)`), and
    stage+cache the paper's freezing with `cache_frozen_encoders`: the frozen EVA ViT + BLIP-2 Q-Former outputs are
                memoised, as in every epoch after the first when the same videos come back (the sample repeats here,
                so every measured step is served from the cache; the first, computing step is a warm-up step)

Throughput: samples per second over the measured steps (after warm-up steps), median of per-step rates.
Peak memory: every mode runs in a fresh process; peak resident set size (ru_maxrss) of that process, which includes
the model, optimizer state and the largest step's activations (on CUDA: `torch.cuda.max_memory_allocated`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


HERE = os.path.dirname(os.path.abspath(__file__))
MODES = [(mode, ckpt) for mode in ("stage", "lora", "full") for ckpt in (False, True)] + [("stage+cache", False)]
ANSWER_TOKENS = 24


def run_one(mode: str, checkpointing: bool, steps: int, warmup: int, batch_size: int) -> dict:
    """One configuration, in this process: build, train `warmup + steps` steps, return the measurements."""
    import torch
    from transformers import TrainerCallback, TrainingArguments

    sys.path.insert(0, HERE)
    from bench_videollama import AUDIO_TOKEN, make_inputs, small_config

    import transformers_videollama as tv
    from transformers_videollama.training_videollama import peak_memory_bytes

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = tv.VideoLlamaForConditionalGeneration(small_config())
    preset = tv.load_training_preset("vision-stage2")
    if mode == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    else:
        tv.freeze_for_training(model, preset["trainable_modules"])
    if mode == "stage+cache":
        tv.cache_frozen_encoders(model)
    if mode == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, tv.lora_config(model, r=16, modules_to_save=preset["trainable_modules"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    inputs = make_inputs()
    prompt = inputs["input_ids"][0].masked_fill(inputs["input_ids"][0] == AUDIO_TOKEN, 5)  # a video-only sample
    answer = torch.randint(3, 32000, (ANSWER_TOKENS,), generator=torch.Generator().manual_seed(1))
    input_ids = torch.cat([prompt, answer])
    sample = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.cat([torch.full_like(prompt, -100), answer]),
        "pixel_values_videos": inputs["pixel_values_videos"][0],
    }
    dataset = [sample] * (batch_size * (steps + warmup))

    def collate(items):
        return {k: torch.stack([item[k] for item in items]) for k in items[0]}

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    args = TrainingArguments(
        output_dir=os.path.join("/tmp", f"bench_training_{mode}_{int(checkpointing)}"),
        per_device_train_batch_size=batch_size,
        max_steps=steps + warmup,
        learning_rate=1e-5,
        use_cpu=True,
        activation_checkpointing=checkpointing,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = tv.VideoLlamaTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[StepTimer()]
    )
    trainer.train()
    measured = times[warmup:]
    return {
        "mode": mode,
        "activation_checkpointing": checkpointing,
        "trainable_params": trainable,
        "samples_per_second": statistics.median(batch_size / t for t in measured),
        "step_seconds": statistics.median(measured),
        "peak_memory_mb": peak_memory_bytes() / 2**20,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="measured steps per mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--modes", help="comma-separated subset, e.g. stage,stage+cache (default: all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "mode,checkpointing" in a fresh process
    args = parser.parse_args()
    if args.one:
        mode, ckpt = args.one.split(",")
        print(json.dumps(run_one(mode, ckpt == "1", args.steps, args.warmup, args.batch_size)))
        return

    rows = []
    wanted = set(args.modes.split(",")) if args.modes else None
    for mode, ckpt in MODES:
        if wanted is not None and mode not in wanted:
            continue
        command = [sys.executable, os.path.abspath(__file__), "--one", f"{mode},{int(ckpt)}", "--steps",
                   str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
        if result.returncode != 0:
            raise RuntimeError(f"{mode} / checkpointing={ckpt} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"done: {mode}, activation checkpointing {ckpt}", file=sys.stderr)

    device = rows[0]["device"]
    print(f"\nTraining at the small config, batch {args.batch_size} x (8 frames 224 px + 130 tokens), float32, "
          f"{device}, median of {args.steps} steps after {args.warmup} warm-up\n")  # fmt: skip
    print("| mode | activation checkpointing | trainable params | samples/s | s/step | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {'on' if r['activation_checkpointing'] else 'off'} | {r['trainable_params'] / 1e6:.2f} M "
            f"| {r['samples_per_second']:.2f} | {r['step_seconds']:.2f} | {r['peak_memory_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
