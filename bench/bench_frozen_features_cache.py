"""The frozen-features cache (`precompute_frozen_features(cache_dir=...)`, `--frozen_features_cache`): how long the
precompute pass takes with nothing stored (plain, and cold: computing + writing the entries) and with every entry
stored (warm: what stage 2 gets from stage 1, or a rerun).

A benchmark, not a timed test: `python bench/bench_frozen_features_cache.py [--videos N] [--repeats R]` prints a
markdown table. The bundled model (float32, CPU, one thread, no loader workers), stage-2 question records about new
world videos (`world_videollama`, training split, with their sound) rendered with the chat template, as the bundled
recipe's stage 2. Each pass starts with a fresh collator (as a new run does: the prompts are rendered again; only
decoding and the frozen encoders are what the cache saves). Times are medians of R runs; the ratio is against plain
in the same run.
"""

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import transformers_videollama as tv
from transformers_videollama import world_videollama as world
from transformers_videollama.cli_videollama import load_model


BUNDLED = Path(tv.__file__).resolve().parent / "bundled" / "videollama-world-small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    try:
        qa = world.generate_split(work / "world", "train", args.videos, seed=7)
        records = [json.loads(line) for line in (qa.parent / "train.jsonl").read_text().splitlines()]
        records = [dict(r, video=str(qa.parent / r["video"])) for r in records]
        model, processor = load_model(str(BUNDLED), device="cpu", dtype="float32")
        tv.freeze_for_training(model, ["video_qformer", "video_position_embedding", "video_projection"])

        def timed(cache_dir):
            # a fresh collator per pass: it memoises rendered prompts, which a new training run starts without
            collator = tv.VideoLlamaDataCollator(processor, prompt_format="chat_template")
            start = time.perf_counter()
            result = tv.precompute_frozen_features(model, records, collator, batch_size=16, cache_dir=cache_dir)
            return time.perf_counter() - start, result

        rows = {"plain": [], "cold": [], "warm": []}
        for repeat in range(args.repeats):
            rows["plain"].append(timed(None)[0])
            cache = work / f"cache{repeat}"
            seconds, cold = timed(cache)
            rows["cold"].append(seconds)
            seconds, warm = timed(cache)
            rows["warm"].append(seconds)
            assert (cold.hits, warm.hits) == (0, len(records)), (cold.hits, warm.hits)
        size = sum(p.stat().st_size for p in (work / "cache0").iterdir()) / 1e6
        plain = statistics.median(rows["plain"])
        print(f"{len(records)} records ({args.videos} videos), median of {args.repeats}; cache {size:.1f} MB\n")
        print("| pass | seconds | ms / record | vs plain |\n|---|---|---|---|")
        for name, values in rows.items():
            median = statistics.median(values)
            print(f"| {name} | {median:.2f} | {1000 * median / len(records):.1f} | {plain / median:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
