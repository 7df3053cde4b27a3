"""CI's smoke version of the bundled model's recipe: every step of `examples/world/train_world_model.py` runs end to
end (world, tokenizer, the three stand-ins, assembly, both stages through the training entry point, evaluation,
remote-code bundle) with a tiny budget. The full recipe is run by hand (README, "The bundled model")."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaForCausalLM

import transformers_videollama as tv  # registers the Auto classes
from transformers_videollama import world_videollama as world


ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "transformers_videollama" / "bundled" / "videollama-world-small"


def test_recipe_smoke_runs_end_to_end(tmp_path):
    bundle = tmp_path / "bundle"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "world" / "train_world_model.py"),
            "--output",
            str(tmp_path / "run"),
            "--bundle",
            str(bundle),
            "--smoke",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "recipe_summary.json").read_text())
    assert summary["smoke"] is True
    steps = {"world scenes (text)", "tokenizer", "assemble", "video warm start", "stage 1", "stage 2", "evaluate"}
    assert steps | {"bundle"} <= set(summary["seconds"])
    assert set(summary["parallel_seconds"]) == {"language model", "frame encoder", "audio trunk", "world videos"}
    for stage in ("stage1", "stage2"):  # every record decoded and encoded once, then the epochs on its features
        assert summary["metrics"][stage]["precomputed_examples"] == 16
    # the warm start stored every training video's and sound track's frozen outputs: stage 1 and stage 2 decode and
    # encode nothing again
    assert summary["metrics"]["stage1"]["precomputed_from_cache"] == 16
    warm = summary["metrics"]
    assert warm["warm_start_mse"] > 0 and warm["warm_start_first_mse"] > 0
    assert all(0 <= warm[f"warm_start_{role}_accuracy"] <= 1 for role in ("colour", "shape", "motion"))
    assert summary["metrics"]["stage2"]["precomputed_from_cache"] == 16
    assert summary["metrics"]["stage2"]["steps"] == 4  # 2 epochs of 16 records, batch 8
    for stage in ("stage1", "stage2"):
        assert summary["metrics"][stage]["final_loss"] is not None
    # the LLM stand-in is probed on text (media written out) per question type and object count
    text = summary["metrics"]["language_model_text_accuracy"]
    assert text and all(0.0 <= v <= 1.0 for v in text.values()) and any(k.startswith("colour_") for k in text)
    heldout = summary["metrics"]["heldout"]
    assert heldout["overall"]["count"] > 0 and "colour" in heldout["per_type"]
    # the stages trained only the paper's modules: the stand-ins are bit-identical to the assembled model
    assembled = AutoModelForImageTextToText.from_pretrained(tmp_path / "run" / "assembled")
    final = AutoModelForImageTextToText.from_pretrained(tmp_path / "run" / "stage2")
    before, after = assembled.state_dict(), final.state_dict()
    frozen = ("model.vision_tower.", "model.qformer.", "model.audio_tower.", "model.language_model.", "lm_head.")
    trained = ("model.video_qformer.", "model.audio_qformer.", "model.video_projection.", "model.audio_projection.")
    assert all(before[k].equal(after[k]) for k in before if k.startswith(frozen))
    assert any(not before[k].equal(after[k]) for k in before if k.startswith(trained))
    # recipe.json keeps the video path as the warm start left it (`train_video_path: false`): the stages train audio
    video = ("model.video_qformer.", "model.video_position_embedding.", "model.video_projection.")
    assert all(before[k].equal(after[k]) for k in before if k.startswith(video))
    assert any(not before[k].equal(after[k]) for k in before if k.startswith("model.audio_qformer."))
    # the bundle is a self-contained remote-code folder with the processor
    assert (bundle / "modeling_videollama.py").is_file() and (bundle / "recipe_summary.json").is_file()
    assert AutoProcessor.from_pretrained(bundle).num_video_query_tokens == 8

    # the stages again on the same assembled model with other seeds: what the stage run alone decides
    seeds = tmp_path / "seeds"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "world" / "stage_seeds.py"), "--run", str(tmp_path / "run")]
        + ["--output", str(seeds), "--seeds", "3", "4", "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((seeds / "seeds.json").read_text())
    assert set(report["seeds"]) == {"3", "4"}
    assert set(report["spread"]) == set(report["seeds"]["3"]) >= {"colour", "overall"}
    for name, spread in report["spread"].items():
        values = [report["seeds"][seed][name] for seed in ("3", "4")]
        assert spread["min"] == min(values) <= spread["mean"] <= max(values) == spread["max"]
    again = AutoModelForImageTextToText.from_pretrained(seeds / "seed3" / "stage2").state_dict()
    assert all(before[k].equal(again[k]) for k in before if k.startswith(frozen))  # stand-ins frozen here too
    assert any(not after[k].equal(again[k]) for k in after if k.startswith(trained))  # another run than the recipe's
    # the seeds' stages take the frozen outputs the run's stages stored (same stand-ins, same videos)
    served = json.loads((seeds / "seed4" / "stage1" / "train_summary.json").read_text())["metrics"]
    assert served["precomputed_features"]["cache_hits"] == 16

    # --redraw: the fresh modules drawn anew per seed (the stand-ins kept), then the same stages
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "world" / "stage_seeds.py"), "--run", str(tmp_path / "run")]
        + ["--output", str(tmp_path / "redrawn"), "--seeds", "5", "--redraw", "--smoke"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "redrawn" / "seeds.json").read_text())["redraw"] is True
    drawn = AutoModelForImageTextToText.from_pretrained(tmp_path / "redrawn" / "seed5" / "assembled").state_dict()
    assert all(before[k].equal(drawn[k]) for k in before if k.startswith(frozen))
    for prefix in trained:  # every trained module drawn anew (LayerNorms start at ones either way)
        assert any(not before[k].equal(drawn[k]) for k in before if k.startswith(prefix))


def test_stage_seeds_refuses_a_folder_that_is_not_a_recipe_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "world" / "stage_seeds.py"), "--run", str(tmp_path)]
        + ["--output", str(tmp_path / "out"), "--seeds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "is not a recipe run's working folder" in result.stderr and "config.json" in result.stderr
    assert "Traceback" not in result.stderr
    # a run's folder, but a seed asked for twice (two runs would write the same seed folder)
    (tmp_path / "assembled").mkdir()
    (tmp_path / "assembled" / "config.json").write_text("{}")
    (tmp_path / "world" / "train").mkdir(parents=True)
    (tmp_path / "world" / "train" / "scenes.jsonl").write_text("")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "world" / "stage_seeds.py"), "--run", str(tmp_path)]
        + ["--output", str(tmp_path / "out"), "--seeds", "1", "2", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "--seeds repeats a seed: [1, 2, 1]" in result.stderr and "Traceback" not in result.stderr


def _recipe_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "train_world_model", ROOT / "examples" / "world" / "train_world_model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_frame_encoder_starts_from_a_2d_sincos_patch_code():
    import torch

    code = _recipe_module().sincos_position_embedding(128, 8)
    assert code.shape == (1, 65, 128)
    assert torch.equal(code[0, 0], torch.zeros(128))  # the class token
    patches = code[0, 1:]
    # every patch has its own code, rows live in the first half of the channels and columns in the second
    assert len({tuple(row.tolist()) for row in patches}) == 64
    grid = patches.reshape(8, 8, 128)
    assert torch.equal(grid[0, :, :64], grid[0, :1, :64].expand(8, 64))  # same row -> same first half
    assert torch.equal(grid[:, 0, 64:], grid[:1, 0, 64:].expand(8, 64))  # same column -> same second half
    assert torch.allclose(grid[0, 0], torch.cat([torch.zeros(32), torch.ones(32)] * 2))  # sin 0, cos 0
    with pytest.raises(ValueError, match="divisible by 4"):
        _recipe_module().sincos_position_embedding(130, 8)


def test_frame_dataset_twins_keep_the_places_and_draw_colours_and_shapes_anew():
    import numpy as np

    recipe = _recipe_module()
    plain = recipe.frame_dataset(40, 32, np.random.default_rng(3))
    pixels, classes, centres = recipe.frame_dataset(40, 32, np.random.default_rng(3), twins=True)
    assert pixels.shape == (80, 3, 32, 32)
    # the first image of each pair is the image drawn without twins: turning twins on changes nothing else
    assert torch.equal(pixels[::2], plain[0]) and torch.equal(classes[::2], plain[1])
    assert torch.equal(centres[::2].nan_to_num(-1), plain[2].nan_to_num(-1))
    # the twin: same objects at the same places, colour and shape drawn again (often different)
    assert torch.equal(centres[1::2].nan_to_num(-1), centres[::2].nan_to_num(-1))
    assert torch.equal(classes[1::2, :, 0], classes[::2, :, 0])
    present = classes[::2, :, 0] == 1
    changed = (classes[1::2, :, 1:] != classes[::2, :, 1:]).any(-1)[present]
    assert 0.5 < changed.float().mean() < 1.0
    two = classes[1::2, 1, 0] == 1  # two objects: still two different shapes
    assert (classes[1::2, 0, 2][two] != classes[1::2, 1, 2][two]).all()
    assert not torch.equal(pixels[1::2], pixels[::2])
    # twins that redraw the shape only keep each object's colour
    _, classes, _ = recipe.frame_dataset(40, 32, np.random.default_rng(3), twins=True, redraw=("shape",))
    assert torch.equal(classes[1::2, :, :2], classes[::2, :, :2])
    assert (classes[1::2, :, 2] != classes[::2, :, 2])[classes[::2, :, 0] == 1].any()


def test_frame_encoder_twin_invariance_pulls_the_position_queries_of_twins_together():
    import numpy as np

    recipe = _recipe_module()
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    model_cfg = {
        "image_size": 32,
        "patch_size": 8,
        "vision": tiny,
        "qformer": dict(tiny, num_query_tokens=8),
        "video_qformer": dict(tiny, num_query_tokens=8),
        "audio": dict(tiny, projection_dim=32, patch_size=16, patch_stride=16),
        "audio_qformer": dict(tiny, num_query_tokens=4),
    }
    tokenizer = tv.train_videollama_tokenizer(["a red circle"] * 10, vocab_size=300, min_frequency=1)
    text = dict(tiny, max_position_embeddings=64)
    config = recipe.build_config(model_cfg, recipe.language_model_config(tokenizer, text), len(tokenizer) - 2)

    def drift(redraw: tuple[str, ...], weight: float, roles: tuple[int, ...]) -> float:
        data = recipe.frame_dataset(32, 32, np.random.default_rng(0), twins=True, redraw=redraw)
        torch.manual_seed(0)
        model = tv.VideoLlamaForConditionalGeneration(config)
        cfg = {"steps": 30, "batch_size": 16, "learning_rate": 3e-3, "position_loss_weight": 50}
        # weight 1e-12 rather than 0: the run draws the same (image, twin) batches as the pulled one
        cfg.update(twin_invariance_weight=weight or 1e-12, twin_redraw=list(redraw))
        metrics = recipe.train_frame_encoder(model, data, cfg, seed=0)
        assert metrics["frame_twin_drift"] > 0  # reported at the logging steps
        with torch.no_grad():
            queries = model.model.qformer(
                encoder_hidden_states=model.model.vision_tower(pixel_values=data[0]).last_hidden_state
            ).last_hidden_state[:, :8]
        twin, other = recipe.twin_drift(queries.reshape(64, 2, 4, -1), data[1], roles)
        return (twin / other).item()

    # relative to unrelated images, twins' position queries were far apart without the pull and close with it
    # (tiny outputs barely differ at first: a large weight); measured 0.35 without, 0.04 with
    assert drift(("colour", "shape"), 1e5, (2, 3)) < 0.25 * drift(("colour", "shape"), 0.0, (2, 3))
    # twins that redraw only the shape pull the colour query too (measured 0.092 without, 0.045 with)
    assert drift(("shape",), 1e5, (0,)) < 0.7 * drift(("shape",), 0.0, (0,))


def _refusal(tmp_path, capsys, edit) -> str:
    """Run the recipe on recipe.json changed by `edit`; it must exit 2 before any work. Returns stderr."""
    recipe = json.loads((ROOT / "examples" / "world" / "recipe.json").read_text())
    edit(recipe)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    with pytest.raises(SystemExit) as exit_info:
        _recipe_module().main(["--output", str(tmp_path / "run"), "--recipe", str(path), "--smoke"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "run").exists()  # refused before any work
    return capsys.readouterr().err


def test_recipe_refuses_query_counts_that_do_not_match_the_media_text(tmp_path, capsys):
    err = _refusal(tmp_path, capsys, lambda r: r["model"]["video_qformer"].update(num_query_tokens=16))
    assert "need 8 / 4 query tokens" in err and "got 16 / 4" in err


def test_language_model_reads_media_words_with_their_objects_bound_words():
    recipe = _recipe_module()
    scene = world.Scene(
        objects=[
            world.SceneObject("blue", "square", "still", (0.7, 0.5), 0.3),
            world.SceneObject("red", "circle", "left", (0.3, 0.5), 0.3),
        ],
        sound=None,
    )
    spec = json.loads((ROOT / "examples" / "world" / "recipe.json").read_text())["lm"]["media_bindings"]
    assert spec == {"shape": {"colour": 1.5}, "motion": {"shape": 1.5}}
    assert recipe.media_text(scene) == " red circle left and blue square still none "
    assert recipe.media_bindings(scene, spec) == [
        [],
        [("red", 1.5)],
        [("circle", 1.5)],
        [],
        [],
        [("blue", 1.5)],
        [("square", 1.5)],
        [],
    ]
    two = {"shape": {"colour": 1.0, "motion": 0.5}}
    assert recipe.media_bindings(scene, two)[1] == [("red", 1.0), ("left", 0.5)]
    tokenizer = tv.train_videollama_tokenizer(
        [recipe.brief_text(scene, [], False)[0], "What colour is the square? The colour of the square is blue."] * 30,
        vocab_size=420,
        min_frequency=1,
    )
    qa = {"question": "What colour is the square?", "answer": "The colour of the square is blue."}
    text, spans = recipe.brief_text(scene, [qa], False)
    ids, labels, bound, scales = recipe.encode_language_model_text(tokenizer, text, spans, scene, spec)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    pairs = [
        (tokens[i], tokenizer.convert_ids_to_tokens(b[0]), c[0]) for i, (b, c) in enumerate(zip(bound, scales)) if c[0]
    ]
    assert pairs == [
        ("▁circle", "▁red", 1.5),
        ("▁left", "▁circle", 1.5),
        ("▁square", "▁blue", 1.5),
        ("▁still", "▁square", 1.5),
    ]
    # only the answer (and its "###") is supervised
    answer = tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
    assert answer.strip() == "The colour of the square is blue.###"
    # the bound words' embeddings are added, scaled, to the media word's; nothing else changes
    config = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 128,
    }
    lm = LlamaForCausalLM(recipe.language_model_config(tokenizer, config))
    table = lm.get_input_embeddings().weight
    ids2, _, bound2, scales2 = recipe.encode_language_model_text(tokenizer, text, spans, scene, two)
    embeds = recipe.bound_input_embeddings(lm, torch.tensor([ids2]), torch.tensor([bound2]), torch.tensor([scales2]))
    circle = tokens.index("▁circle")
    assert torch.allclose(
        embeds[0, circle],
        table[ids2[circle]]
        + table[tokenizer.convert_tokens_to_ids("▁red")]
        + 0.5 * table[tokenizer.convert_tokens_to_ids("▁left")],
    )
    unbound = [i for i, c in enumerate(scales2) if not any(c)]
    assert torch.equal(embeds[0, unbound], table[[ids2[i] for i in unbound]])
    with pytest.raises(ValueError, match="media text"):
        recipe.encode_language_model_text(tokenizer, "no media here", [], scene, spec)


def test_recipe_refuses_media_bindings_it_cannot_read(tmp_path, capsys):
    err = _refusal(tmp_path, capsys, lambda r: r["lm"].update(media_bindings={"shape": {"size": 1.0}}))
    assert "lm.media_bindings" in err and "shape: {'size': 1.0}" in err


def test_recipe_refuses_twins_that_redraw_something_else(tmp_path, capsys):
    err = _refusal(tmp_path, capsys, lambda r: r["frame_encoder"].update(twin_redraw=["size"]))
    assert "frame_encoder.twin_redraw" in err and "got ['size']" in err


def test_answer_priors_weigh_each_answered_attribute_by_the_training_split():
    import math

    recipe = _recipe_module()

    def obj(colour, shape, motion, x):
        return world.SceneObject(colour, shape, motion, (x, 0.5), 0.3)

    # a "training split": triangles move left or right, never still; circles are red or blue, never green
    train = [
        world.Scene([obj("red", "triangle", "left", 0.5)], None),
        world.Scene([obj("blue", "triangle", "right", 0.5)], None),
        world.Scene([obj("red", "circle", "still", 0.3), obj("blue", "square", "still", 0.7)], None),
        world.Scene([obj("blue", "circle", "left", 0.5)], None),
    ]
    counts = recipe.pair_counts(train)
    assert (
        counts[("motion", "left", "shape", "triangle")] == 1 and ("motion", "still", "shape", "triangle") not in counts
    )
    assert counts[("shape", "square", "colour", "blue")] == counts[("colour", "blue", "shape", "square")] == 1

    scene = world.Scene([obj("green", "circle", "left", 0.3), obj("red", "triangle", "right", 0.7)], "high tone")
    qas = {qa["type"] if qa["type"] not in ("colour", "motion") else (qa["type"], qa["question"]): qa
           for qa in world.questions(scene)}  # fmt: skip
    motion = recipe.answer_priors(scene, qas[("motion", "How is the triangle moving?")], counts, 1.0)
    (prior,) = motion
    answer = qas[("motion", "How is the triangle moving?")]["answer"]  # "The triangle is moving right."
    assert answer[prior["offset"] :].startswith("moving right") and prior["choices"] == list(
        world.MOTION_TEXT.values()
    )
    weight = dict(zip(prior["choices"], prior["weights"]))
    # P(motion | triangle) x P(motion | red), add-one: still never seen with a triangle, moving right once each
    expected = {
        m: (counts.get(("motion", m, "shape", "triangle"), 0) + 1)
        / (2 + 5)
        * (counts.get(("motion", m, "colour", "red"), 0) + 1)
        / (2 + 5)
        for m in world.MOTIONS
    }
    assert [weight[world.MOTION_TEXT[m]] for m in world.MOTIONS] == pytest.approx([expected[m] for m in world.MOTIONS])
    assert math.isclose(weight["not moving"], 1 / 7 * 2 / 7) and weight["moving right"] == pytest.approx(2 / 7 * 1 / 7)

    # the shape question: one prior per object, in caption order; the colour question: the colour word (the last)
    shapes = recipe.answer_priors(scene, qas["shape"], counts, 1.0)
    assert [qas["shape"]["answer"][p["offset"] :].split()[0].rstrip(".") for p in shapes] == ["circle", "triangle"]
    (colour,) = recipe.answer_priors(scene, qas[("colour", "What colour is the circle?")], counts, 1.0)
    assert qas[("colour", "What colour is the circle?")]["answer"][colour["offset"] :] == "green."
    # a description: colour, shape and motion of each object, in order; nothing for count or sound
    described = recipe.answer_priors(scene, qas["describe"], counts, 1.0)
    words = [qas["describe"]["answer"][p["offset"] :].split()[0].rstrip(".") for p in described]
    assert words == ["green", "circle", "moving", "red", "triangle", "moving"]
    assert recipe.answer_priors(scene, qas["count"], counts, 1.0) == []
    assert recipe.answer_priors(scene, qas["sound"], counts, 1.0) == []
    # the records of both stages carry them; the collator accepts them
    records = recipe.stage_records(
        [scene], Path("videos"), 2, __import__("numpy").random.default_rng(0), (counts, 1.0)
    )
    answers = records[0]["conversations"][1::2]
    assert all("priors" in turn for turn in answers) and any(turn["priors"] for turn in answers)


def test_recipe_refuses_answer_priors_it_cannot_use(tmp_path, capsys):
    err = _refusal(tmp_path, capsys, lambda r: r.update(answer_priors={"smoothing": 0}))
    assert "answer_priors" in err and "{'smoothing': 0}" in err


def test_recipe_refuses_switches_that_are_not_true_or_false(tmp_path, capsys):
    err = _refusal(tmp_path, capsys, lambda r: r["stage2"].update(train_video_path="no"))
    assert "stage2.train_video_path is true or false" in err and "'no'" in err
    err = _refusal(tmp_path, capsys, lambda r: r["lm"].update(motion_geometry=1))
    assert "lm.motion_geometry is true or false" in err


def test_media_word_targets_are_what_the_llm_stand_in_reads_for_each_word():
    recipe = _recipe_module()
    tokenizer = AutoProcessor.from_pretrained(BUNDLED).tokenizer
    embeddings = torch.randn(len(tokenizer), 6, generator=torch.Generator().manual_seed(0))
    scene = world.Scene(
        [
            world.SceneObject("blue", "square", "still", (0.7, 0.5), 0.3),
            world.SceneObject("red", "circle", "left", (0.3, 0.5), 0.3),
        ],
        None,
    )
    spec = {"shape": {"colour": 1.5}, "motion": {"shape": 1.5}}

    def e(word):
        return embeddings[tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word)[0])]

    expected = [  # left to right: "red circle left and blue square still none", the bound words added
        e("red"),
        e("circle") + 1.5 * e("red"),
        e("left") + 1.5 * e("circle"),
        e("and"),
        e("blue"),
        e("square") + 1.5 * e("blue"),
        e("still") + 1.5 * e("square"),
        e("none"),
    ]
    targets = recipe.media_word_targets(embeddings, tokenizer, scene, spec)
    assert targets.shape == (8, 6)
    torch.testing.assert_close(targets, torch.stack(expected))


def test_nearest_word_accuracy_reads_each_query_against_the_other_values_of_its_role():
    recipe = _recipe_module()
    tokenizer = AutoProcessor.from_pretrained(BUNDLED).tokenizer
    embeddings = torch.randn(len(tokenizer), 16, generator=torch.Generator().manual_seed(1))
    spec = {"shape": {"colour": 1.5}, "motion": {"shape": 1.5}}
    scenes = [
        world.Scene([world.SceneObject("red", "circle", "left", (0.5, 0.5), 0.3)], None),
        world.Scene(
            [
                world.SceneObject("blue", "square", "still", (0.3, 0.5), 0.3),
                world.SceneObject("green", "cross", "up", (0.7, 0.5), 0.3),
            ],
            None,
        ),
    ]
    exact = torch.stack([recipe.media_word_targets(embeddings, tokenizer, scene, spec) for scene in scenes])
    assert recipe.nearest_word_accuracy(exact, scenes, embeddings, tokenizer, spec) == {
        "colour": 1.0,
        "shape": 1.0,
        "motion": 1.0,
    }
    # the right-hand cross's motion query says "down" (the targets of the same scene with the cross moving down)
    moved = world.Scene([scenes[1].objects[0], world.SceneObject("green", "cross", "down", (0.7, 0.5), 0.3)], None)
    wrong = exact.clone()
    wrong[1, 6] = recipe.media_word_targets(embeddings, tokenizer, moved, spec)[6]
    accuracy = recipe.nearest_word_accuracy(wrong, scenes, embeddings, tokenizer, spec)
    assert accuracy == {"colour": 1.0, "shape": 1.0, "motion": 2 / 3}


def test_video_warm_start_regresses_the_media_words_and_touches_only_the_video_path(tmp_path):
    recipe = _recipe_module()
    settings = json.loads((ROOT / "examples" / "world" / "recipe.json").read_text())
    cfg = dict(settings, video_warm_start={"epochs": 40, "batch_size": 4, "learning_rate": 3e-3})
    processor = AutoProcessor.from_pretrained(BUNDLED)
    torch.manual_seed(0)
    lm_config = recipe.language_model_config(processor.tokenizer, cfg["model"]["text"])
    model = tv.VideoLlamaForConditionalGeneration(
        recipe.build_config(cfg["model"], lm_config, len(processor.tokenizer) - 2)
    )
    rng = np.random.default_rng(3)
    scenes = [world.sample_scene(rng, "train") for _ in range(4)]
    for k, scene in enumerate(scenes):
        scene.id = f"s{k}"
        world.write_video(scene, tmp_path / "videos" / f"s{k}.mp4")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.model.vision_tower.requires_grad_(False)  # a flag the warm start must give back as it found it

    metrics = recipe.warm_start_video_qformer(
        model, processor, scenes, tmp_path / "videos", cfg, tmp_path / "frozen_features", seed=0
    )

    assert metrics["warm_start_mse"] < 0.2 * metrics["warm_start_first_mse"]
    assert set(metrics) >= {f"warm_start_{role}_accuracy" for role in ("colour", "shape", "motion")}
    after = model.state_dict()
    trained = ("model.video_qformer.", "model.video_position_embedding.", "model.video_projection.")
    assert all(before[k].equal(after[k]) for k in before if not k.startswith(trained))
    assert any(not before[k].equal(after[k]) for k in before if k.startswith("model.video_qformer."))
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert all(p.requires_grad for p in model.model.video_qformer.parameters())
    # stage 1 finds them there: each video and each sound track
    tracks = sum(scene.sound is not None for scene in scenes)
    assert len(list((tmp_path / "frozen_features").glob("*.safetensors"))) == 4 + tracks


def test_motion_geometry_puts_still_midway_between_the_opposite_motions():
    recipe = _recipe_module()
    tokenizer = AutoProcessor.from_pretrained(BUNDLED).tokenizer
    table = torch.randn(len(tokenizer), 6, generator=torch.Generator().manual_seed(0))
    before = table.clone()
    ids = recipe.motion_word_ids(tokenizer)
    recipe.place_motion_words(table, ids)
    assert len(set(ids.values())) == 5
    e = {m: table[i] for m, i in ids.items()}
    torch.testing.assert_close(e["still"], (e["left"] + e["right"]) / 2)
    torch.testing.assert_close(e["still"], (e["up"] + e["down"]) / 2)
    # each axis keeps its difference (what tells left from right), every other word its embedding
    torch.testing.assert_close(e["left"] - e["right"], before[ids["left"]] - before[ids["right"]])
    torch.testing.assert_close(e["up"] - e["down"], before[ids["up"]] - before[ids["down"]])
    others = [i for i in range(len(tokenizer)) if i not in ids.values()]
    assert torch.equal(table[others], before[others])
    # still lands on the mean of the two midpoints and its own old place (a projection: doing it again changes nothing)
    old = {m: before[i] for m, i in ids.items()}
    expected = ((old["left"] + old["right"]) / 2 + (old["up"] + old["down"]) / 2 + old["still"]) / 3
    torch.testing.assert_close(e["still"], expected)
    again = table.clone()
    recipe.place_motion_words(again, ids)
    torch.testing.assert_close(again, table)


def test_language_model_trained_with_motion_geometry_keeps_it():
    recipe = _recipe_module()
    scenes = [
        world.Scene([world.SceneObject(c, s, m, (0.5, 0.5), 0.3)], None)
        for c, s, m in [("red", "circle", "left"), ("blue", "square", "still"), ("green", "cross", "up")]
    ] + [
        world.Scene([world.SceneObject("red", "triangle", "down", (0.5, 0.5), 0.3)], None),
        world.Scene([world.SceneObject("red", "triangle", "right", (0.5, 0.5), 0.3)], None),
    ]
    texts = []
    for scene in scenes:
        qa = {"question": "How is the object moving?", "answer": world.MOTION_TEXT[scene.objects[0].motion]}
        texts.append((*recipe.brief_text(scene, [qa], False), scene))
    tokenizer = tv.train_videollama_tokenizer([t for t, _, _ in texts] * 20, vocab_size=400, min_frequency=1)
    cfg = {"media_bindings": {"motion": {"shape": 1.5}}, "batch_size": 2, "motion_geometry": True}
    model_cfg = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 256,
    }
    lm = recipe.train_language_model([(texts, 3, 1e-2)], tokenizer, cfg, model_cfg, seed=0)
    table = lm.get_input_embeddings().weight.detach()
    e = {m: table[i] for m, i in recipe.motion_word_ids(tokenizer).items()}
    torch.testing.assert_close(e["still"], (e["left"] + e["right"]) / 2)
    torch.testing.assert_close(e["still"], (e["up"] + e["down"]) / 2)


def test_motion_geometry_is_not_applied_when_the_tokenizer_reads_motion_words_as_one_token(caplog):
    recipe = _recipe_module()
    # a tokenizer that never saw the motion words splits each into "▁" + letters: all five first pieces are "▁"
    tokenizer = tv.train_videollama_tokenizer(["a red circle and a blue square"] * 20, vocab_size=300, min_frequency=1)
    assert {tokenizer.tokenize(m)[0] for m in world.MOTIONS} == {"▁"}
    with caplog.at_level("WARNING", logger="train_world_model"):
        assert recipe.motion_word_ids(tokenizer) is None
    assert "reads motion words as the same token" in caplog.text and "not applied" in caplog.text
