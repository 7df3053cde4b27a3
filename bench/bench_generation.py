"""Video-LLaMA generation benchmark: time to first token and throughput, batch 1 and batch 8 (issue #4).

A benchmark, not a timed test: `python bench/bench_generation.py [--rounds 3] [--new-tokens 32] [--threads 2]` prints a
markdown table. Random weights at the "small" config of `bench/bench_videollama.py` (its config builder is imported,
so both benchmarks measure the same model), float32, sdpa, `torch.inference_mode()`.

Each request is `model.generate(**inputs, max_new_tokens=N, min_new_tokens=N, do_sample=False)` on B samples, each
with its own 8-frame 224 px video and 8-clip sound track and the Vicuna audio+video demo prompt layout (texts of
different lengths, so batch 8 is left-padded). Measured per request, median over rounds after a warm-up round:

    TTFT        generate() call -> first new token (a streamer's timestamp): both encoders + prefill
    decode      the remaining N - 1 steps; decode tokens/s = B * (N - 1) / decode time
    total       whole request; videos/s = B / total, tokens/s = B * N / total
    encoders    forward calls of the vision tower and of the audio tower per generate() call (1 and 1: the
                encoders run once per request, on the whole batch, never per new token)
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_videollama import AUDIO_TOKEN, NUM_CLIPS, NUM_FRAMES, PROMPT_LAYOUT, VIDEO_TOKEN, small_config  # noqa: E402


class FirstTokenClock:
    """A generate() streamer that records when the first new token arrives (its first `put` is the prompt)."""

    def __init__(self):
        self.puts, self.first_token_at = 0, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2 and self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def end(self):
        pass


def make_batch(batch_size: int, seed: int = 0) -> dict:
    """B demo-layout prompts (text lengths vary by sample), left-padded, with one video and one audio track each."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batch_size):
        pieces = []
        for kind, length in PROMPT_LAYOUT:
            if kind == "bos":
                pieces.append(torch.ones(length, dtype=torch.long))
            elif kind == "text":
                pieces.append(torch.randint(3, 32000, (max(1, length - 2 * b),), generator=gen))
            else:
                token = AUDIO_TOKEN if kind == "audio" else VIDEO_TOKEN
                pieces.append(torch.full((length,), token, dtype=torch.long))
        rows.append(torch.cat(pieces))
    width = max(len(r) for r in rows)
    input_ids = torch.zeros(batch_size, width, dtype=torch.long)
    attention_mask = torch.zeros(batch_size, width, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, width - len(row) :] = row
        attention_mask[b, width - len(row) :] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values_videos": torch.randn(batch_size, NUM_FRAMES, 3, 224, 224, generator=gen),
        "input_values": torch.randn(batch_size, NUM_CLIPS, 1, 128, 204, generator=gen),
    }


def measure(model, inputs: dict, new_tokens: int) -> dict:
    calls = {"vision": 0, "audio": 0}
    hooks = [
        model.model.vision_tower.register_forward_hook(lambda *_: calls.__setitem__("vision", calls["vision"] + 1)),
        model.model.audio_tower.register_forward_hook(lambda *_: calls.__setitem__("audio", calls["audio"] + 1)),
    ]
    clock = FirstTokenClock()
    try:
        start = time.perf_counter()
        out = model.generate(
            **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=clock
        )
        end = time.perf_counter()
    finally:
        for hook in hooks:
            hook.remove()
    assert out.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    return {"ttft": clock.first_token_at - start, "total": end - start, "calls": dict(calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from transformers_videollama import VideoLlamaForConditionalGeneration

    config = small_config()
    config._attn_implementation = "sdpa"
    model = VideoLlamaForConditionalGeneration(config).eval()
    n = args.new_tokens
    rows = []
    load_before = _loadavg()
    with torch.inference_mode():
        for batch_size in args.batch_sizes:
            inputs = make_batch(batch_size)
            measure(model, inputs, n)  # warm-up
            results = [measure(model, inputs, n) for _ in range(args.rounds)]
            ttft = statistics.median(r["ttft"] for r in results)
            total = statistics.median(r["total"] for r in results)
            decode = statistics.median(r["total"] - r["ttft"] for r in results)
            calls = {tuple(sorted(r["calls"].items())) for r in results}
            (counted,) = calls  # identical in every round
            rows.append(
                [
                    str(batch_size),
                    f"{ttft:.3f}",
                    f"{total:.3f}",
                    f"{batch_size * (n - 1) / decode:.1f}",
                    f"{batch_size * n / total:.1f}",
                    f"{batch_size / total:.2f}",
                    f"{dict(counted)['vision']} / {dict(counted)['audio']}",
                ]
            )
            print(f"batch {batch_size}: done", file=sys.stderr)

    header = [
        "batch",
        "TTFT (s)",
        f"request, {n} new tokens (s)",
        "decode tokens/s",
        "tokens/s (whole request)",
        "videos/s",
        "vision / audio encoder calls per generate()",
    ]
    print(f"### Generation, small config, float32, sdpa, {args.threads} threads, median of {args.rounds} rounds\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        f"\nPrompt: {sum(length for _, length in PROMPT_LAYOUT)} positions per sample (batch 8: text lengths vary, "
        "left padding); each sample 8 frames x 224 px + 8 audio clips; torch " + torch.__version__
    )
    print(
        f"1-minute load average before / after: {load_before} / {_loadavg()} (a load well above the thread count means "
        "other processes shared the CPUs and the times are inflated)"
    )


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:  # not Linux
        return "n/a"


if __name__ == "__main__":
    main()
