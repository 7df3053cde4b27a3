"""How much of the bundled model's held-out accuracy is the luck of its stage run?

    python examples/world/stage_seeds.py --run runs/world --output runs/seeds --seeds 1 2

`--run` is the working folder of a full recipe run (`train_world_model.py --output`): its assembled model (the
stand-ins with fresh video/audio Q-Formers and projections) and its world. For each seed, stages 1 and 2 run again on
that same assembled model, exactly as the recipe runs them (`examples/train_videollama.py`, the recipe's budgets),
with the stage records drawn anew and the Trainer seeded with the seed (data order), then the held-out split is
evaluated. Everything before the stages stays fixed, so the spread across seeds is what the stage run alone
decides. With `--redraw` each seed also draws the fresh modules anew (video/audio Q-Formers, position embeddings,
projections, started as the recipe's steps 4 and 4b do) into `OUTPUT/seedN/assembled`: the stand-ins stay, and the
spread then includes the initial draw. Writes `OUTPUT/seeds.json`: per seed the accuracy per question type, then the mean,
min and max. The stages take the frozen encoders' outputs from the run's `frozen_features` cache (entries are
keyed by the encoders' weights, which every seed shares), so each seed decodes and encodes almost nothing.

Why: held-out motion asks about shape-motion pairs the stages never see, and what the video Q-Former makes of them
depends on the run; a change to the recipe is only an improvement if it holds across seeds (see the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import train_world_model as recipe  # noqa: E402  (the recipe's own steps, from beside this file)


def redraw_fresh_modules(
    base: Path, out: Path, train_scenes: list, world_dir: Path, cfg: dict, seed: int, cache: Path
) -> Path:
    """The assembled model in `base` with everything the stages train drawn anew from `seed` (the frozen stand-ins
    copied over) and started as in the recipe's step 4 (`init_fresh_modules`) and, when the recipe has it, 4b
    (`warm_start_video_qformer`, its frozen features from and into `cache`); saved to `out`."""
    import transformers_videollama as tv

    assembled = tv.VideoLlamaForConditionalGeneration.from_pretrained(base)
    torch.manual_seed(seed)
    model = tv.VideoLlamaForConditionalGeneration(assembled.config)
    frozen = ("model.vision_tower.", "model.qformer.", "model.audio_tower.", "model.language_model.", "lm_head.")
    state = model.state_dict()
    state.update({k: v for k, v in assembled.state_dict().items() if k.startswith(frozen)})
    model.load_state_dict(state)
    processor = tv.VideoLlamaProcessor.from_pretrained(base)
    recipe.init_fresh_modules(model, processor, train_scenes, world_dir / "train" / "videos", cfg)
    if cfg.get("video_warm_start"):
        recipe.warm_start_video_qformer(
            model, processor, train_scenes, world_dir / "train" / "videos", cfg, cache, seed
        )
    model.generation_config = assembled.generation_config
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="working folder of a recipe run (assembled/, world/)")
    parser.add_argument("--output", required=True, type=Path, help="where each seed's stages and seeds.json go")
    parser.add_argument("--seeds", required=True, type=int, nargs="+", help="Trainer / stage-record seeds")
    parser.add_argument("--redraw", action="store_true", help="also draw the fresh Q-Formers etc. anew per seed")
    parser.add_argument("--smoke", action="store_true", help="the recipe's smoke budgets (for a --smoke run)")
    parser.add_argument("--recipe", type=Path, default=HERE / "recipe.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    base, world_dir = args.run / "assembled", args.run / "world"
    missing = [str(p) for p in (base / "config.json", world_dir / "train" / "scenes.jsonl") if not p.is_file()]
    if missing:
        parser.error(f"--run {args.run} is not a recipe run's working folder: missing {', '.join(missing)}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds repeats a seed: {args.seeds}")
    settings = json.loads(args.recipe.read_text())
    cfg = recipe._merge({k: v for k, v in settings.items() if k != "smoke"}, settings["smoke"] if args.smoke else {})
    train_scenes = [
        recipe.world.Scene(**recipe._scene_kwargs(line))
        for line in recipe._read_jsonl(world_dir / "train" / "scenes.jsonl")
    ]
    # the run's own frozen-features cache: its stand-ins stay frozen in every seed (--redraw keeps them), so the
    # stages decode and encode no video the run's stages already did
    cache = args.run / "frozen_features"
    runs: dict[str, dict] = {}
    for seed in args.seeds:
        out = args.output / f"seed{seed}"
        rng = np.random.default_rng([seed, 6])
        start = (
            redraw_fresh_modules(base, out / "assembled", train_scenes, world_dir, cfg, seed, cache)
            if args.redraw
            else base
        )
        _, _, metrics = recipe.train_stages(out, start, train_scenes, world_dir, cfg, seed, rng, feature_cache=cache)
        runs[str(seed)] = {k: round(v["accuracy"], 4) for k, v in metrics["heldout"]["per_type"].items()}
        runs[str(seed)]["overall"] = round(metrics["heldout"]["overall"]["accuracy"], 4)
        logging.info("seed %d: %s", seed, runs[str(seed)])
    spread = {}  # every seed is evaluated on the same held-out records, so on the same question types
    for name in runs[str(args.seeds[0])]:
        values = [accuracies[name] for accuracies in runs.values()]
        spread[name] = {"mean": round(float(np.mean(values)), 4), "min": min(values), "max": max(values)}
    result = {"run": str(args.run), "redraw": args.redraw, "seeds": runs, "spread": spread}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "seeds.json").write_text(json.dumps(result, indent=1))
    logging.info("spread: %s", json.dumps(spread))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
