"""Answer priors (debiasing by a product of experts): the logit biases the collator derives from a record's `priors`,
the same biases through the precomputed-features path, the Trainer's loss on the biased logits, and the checks on
bad priors."""

import json
import math

import pytest
import torch
from _videollama_training import (
    make_dataset,
    make_model_dir,
    one_thread,  # noqa: F401  (autouse fixture)
    run_training,
    tiny_processor,
)

from transformers_videollama import (
    PrecomputedFeaturesCollator,
    VideoLlamaDataCollator,
    VideoLlamaForConditionalGeneration,
    VideoLlamaTrainer,
    load_training_data,
    precompute_frozen_features,
)
from transformers_videollama.collator_videollama import answer_prior_biases


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_processor().tokenizer


def _biases(tokenizer, text: str, start: int, answer: str, priors: list[dict]):
    def tokenize(other):
        encoding = tokenizer(other, return_offsets_mapping=True)
        return encoding.input_ids, encoding.offset_mapping

    ids, offsets = tokenize(text)
    return ids, answer_prior_biases(text, ids, offsets, [(start, answer, priors)], tokenize)


def test_biases_lower_the_less_likely_continuations_only(tokenizer):
    text = "Q: which? A: It is red."
    start = text.index("It")
    prior = {"offset": 6, "choices": ["red", "green", "blue", "white"], "weights": [1, 1, 0, 2]}
    ids, entries = _biases(tokenizer, text, start, "It is red.", [prior])
    # each colour's first token after "It is" ('▁', '▁g', '▁bl', '▁wh' with the fixture tokenizer)
    first = {tokenizer.tokenize(f"It is {word}.")[4]: word for word in prior["choices"]}
    assert len(first) == 4
    (position,) = {p for p, _, _ in entries}
    assert tokenizer.convert_ids_to_tokens(ids[position]) == tokenizer.tokenize("It is red.")[4]  # the answer's own
    got = {first[tokenizer.convert_ids_to_tokens(t)]: b for _, t, b in entries}
    # relative to the likeliest (white, weight 2: untouched); blue's weight 0 is a large finite negative bias
    assert got == pytest.approx({"red": math.log(0.5), "green": math.log(0.5), "blue": -1e4})

    # uniform weights: nothing to add
    assert _biases(tokenizer, text, start, "It is red.", [{**prior, "weights": [1, 1, 1, 1]}])[1] == []


def test_multi_token_choices_share_their_common_prefix(tokenizer):
    text = "A: It is moving left."
    answer = text[3:]
    prior = {"offset": 6, "choices": ["moving left", "moving right", "not moving"], "weights": [1, 3, 0]}
    ids, entries = _biases(tokenizer, text, 3, answer, [prior])
    tokens = tokenizer.tokenize("It is moving left.")[4:]
    right = tokenizer.tokenize("It is moving right.")[4:]
    shared = next(k for k, (a, b) in enumerate(zip(tokens, right)) if a != b)  # where "left" and "right" part
    by_position = {}
    for position, token, bias in entries:
        by_position.setdefault(position, {})[tokenizer.convert_ids_to_tokens(token)] = bias
    start = len(tokenizer("A: It is").input_ids)  # the answer's first token after "It is"
    # first token: "moving ..." (weight 4) against "not moving" (0); then, past the shared "moving", left (1)
    # against right (3): the answer's own token lowered, right's untouched
    assert by_position == {
        start: {tokenizer.tokenize("It is not moving.")[4]: -1e4},
        start + shared: {tokens[shared]: pytest.approx(math.log(1 / 3))},
    }


@pytest.mark.parametrize(
    "prior, message",
    [
        ({"offset": 99, "choices": ["red"], "weights": [1]}, "'offset' must be a character index"),
        ({"offset": 6, "choices": ["blue", "green"], "weights": [1, 1]}, "does not go on with any of"),
        ({"offset": 6, "choices": ["red", "green"], "weights": [0, 1]}, "own choice 'red' has prior weight 0"),
        ({"offset": 6, "choices": ["red", "green"], "weights": [1]}, "one number per choice"),
        ({"offset": 6, "choices": ["red", "red"], "weights": [1, 1]}, "distinct strings"),
    ],
)
def test_bad_priors_are_refused(tokenizer, prior, message):
    text = "A: It is red."
    with pytest.raises(ValueError, match=message):
        _biases(tokenizer, text, 3, text[3:], [prior])


def _record(video: str, answer: str, weights: list[float]) -> dict:
    return {
        "video": video,
        "conversations": [
            {"from": "human", "value": "What colour is the video?"},
            {
                "from": "gpt",
                "value": answer,
                "priors": [{"offset": 6, "choices": ["red", "green", "blue", "white"], "weights": weights}],
            },
        ],
    }


@pytest.mark.parametrize("prompt_format", ["chat_template", "training"])
def test_collator_puts_the_biases_on_supervised_answer_tokens(tmp_path, prompt_format):
    data = make_dataset(tmp_path, num_records=2, with_image=False)
    videos = [json.loads(line)["video"] for line in data.read_text().splitlines()]
    collator = VideoLlamaDataCollator(tiny_processor(), prompt_format=prompt_format)
    records = [_record(str(tmp_path / videos[0]), "It is red.", [1, 1, 0, 2])]
    records.append({**records[0], "conversations": [records[0]["conversations"][0], {"from": "gpt", "value": "No."}]})
    batch = collator(records)
    index, bias = batch["answer_prior_index"], batch["answer_prior_bias"]
    assert index.shape == (3, 3) and set(index[:, 0].tolist()) == {0}  # only the record with priors
    assert (batch["labels"][index[:, 0], index[:, 1]] != -100).all()  # on supervised answer tokens
    assert sorted(bias.tolist()) == pytest.approx(sorted([-1e4, math.log(0.5), math.log(0.5)]))
    assert "answer_prior_index" not in collator([records[1]])  # no priors: the plain batch
    # the precomputed-features path carries the same biases per record and batches them the same way
    model = VideoLlamaForConditionalGeneration.from_pretrained(make_model_dir(tmp_path / "model"))
    model.requires_grad_(False)  # frozen encoders (the stages' policy): their outputs can be precomputed
    features = precompute_frozen_features(model, records, collator, batch_size=2)
    again = PrecomputedFeaturesCollator(collator.pad_id)(list(features))
    assert torch.equal(again["answer_prior_index"], index) and torch.equal(again["answer_prior_bias"], bias)


def test_trainer_loss_is_the_cross_entropy_of_the_biased_logits(tmp_path):
    data = make_dataset(tmp_path, num_records=1, with_image=False)
    video = str(tmp_path / json.loads(data.read_text())["video"])
    model_dir = make_model_dir(tmp_path / "model", lm_head_scale=30.0)
    model = VideoLlamaForConditionalGeneration.from_pretrained(model_dir).eval()
    collator = VideoLlamaDataCollator(tiny_processor(), prompt_format="chat_template")
    batch = collator([_record(video, "It is red.", [1, 1, 0, 2])])
    from transformers import TrainingArguments

    trainer = VideoLlamaTrainer(
        model=model, args=TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to="none")
    )
    loss = trainer.compute_loss(model, dict(batch))
    plain = {k: v for k, v in batch.items() if not k.startswith("answer_prior")}
    with torch.no_grad():
        outputs = model(**{k: v for k, v in plain.items() if k != "labels"})
    logits = outputs.logits.clone()
    for (row, position, token), value in zip(batch["answer_prior_index"].tolist(), batch["answer_prior_bias"]):
        logits[row, position - 1, token] += value
    labels = batch["labels"]
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() != pytest.approx(model(**plain).loss.item(), rel=1e-3)  # the biases do change it
    assert trainer.compute_loss(model, dict(plain)).item() == pytest.approx(model(**plain).loss.item())
    shifted = dict(batch, answer_prior_index=batch["answer_prior_index"] + torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match="answer priors point outside the batch"):
        trainer.compute_loss(model, shifted)  # rows that are not this batch's (a batch split after collation)


def test_entry_point_trains_with_priors_the_same_with_and_without_precomputed_features(tmp_path):
    data = make_dataset(tmp_path / "data", num_records=4, with_image=False)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    for record in records:  # "It is <colour>.": a prior that favours white, rules blue out unless it is the answer
        answer = record["conversations"][1]["value"]
        weights = [1, 1, 1 if "blue" in answer else 0, 2]
        record["conversations"][1]["priors"] = [
            {"offset": 6, "choices": ["red", "green", "blue", "white"], "weights": weights}
        ]
    with_priors = data.with_name("priors.jsonl")
    with_priors.write_text("".join(json.dumps(r) + "\n" for r in records))
    model_dir = make_model_dir(tmp_path / "model")
    common = ["--model_name_or_path", model_dir, "--output_dir", None, "--per_device_train_batch_size", "2",
              "--logging_steps", "1", "--save_strategy", "no", "--use_cpu", "--seed", "0", "--report_to", "none",
              "--disable_tqdm", "true", "--stage", "vision-stage2", "--num_train_epochs", "2",
              "--learning_rate", "1e-2", "--train_augmentation", "false", "--dataloader_num_workers", "0",
              "--prompt_format", "chat_template"]  # fmt: skip

    def losses(name, jsonl, *extra):
        argv = [tmp_path / name if a is None else a for a in common] + ["--train_data", f"jsonl:{jsonl}", *extra]
        trainer = run_training(argv)
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    plain = losses("plain", data)
    direct = losses("direct", with_priors)
    precomputed = losses("precomputed", with_priors, "--precompute_frozen_features", "true")
    assert precomputed == pytest.approx(direct, abs=1e-5)
    assert direct != pytest.approx(plain, abs=1e-3)


def test_loader_checks_priors_with_the_line(tmp_path):
    def load(turn_priors):
        path = tmp_path / "bad.jsonl"
        record = {
            "video": "clip.mp4",
            "conversations": [
                {"from": "human", "value": "What colour?"},
                {"from": "gpt", "value": "It is red.", "priors": turn_priors},
            ],
        }
        path.write_text(json.dumps(record) + "\n")
        return load_training_data("jsonl", path)

    good = load([{"offset": 6, "choices": ["red", "blue"], "weights": [1, 0]}])
    assert good[0]["conversations"][1]["priors"] == [{"offset": 6, "choices": ["red", "blue"], "weights": [1.0, 0.0]}]
    assert good[0]["conversations"][0]["priors"] == []
    with pytest.raises(ValueError, match=r"bad.jsonl:1: turn 1: prior 0: the answer's own choice 'red' has prior"):
        load([{"offset": 6, "choices": ["red", "blue"], "weights": [0, 1]}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: turn 1: prior 0: the answer does not go on with"):
        load([{"offset": 3, "choices": ["red"], "weights": [1]}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: turn 1: prior 0: a prior is an object with 'offset'"):
        load([{"offset": 6, "choices": ["red"]}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: turn 1: prior 0 has unknown fields \['weight'\]"):
        load([{"offset": 6, "choices": ["red"], "weights": [1], "weight": 1}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: turn 0: 'priors' belong to gpt"):
        path = tmp_path / "bad.jsonl"
        turns = [{"from": "human", "value": "Q", "priors": [{"offset": 0, "choices": ["Q"], "weights": [1]}]}]
        path.write_text(json.dumps({"video": "v.mp4", "conversations": turns + [{"from": "gpt", "value": "A"}]}))
        load_training_data("jsonl", path)


def test_collator_refuses_priors_it_cannot_place(tmp_path):
    data = make_dataset(tmp_path, num_records=1, with_image=False)
    video = str(tmp_path / json.loads(data.read_text())["video"])
    record = _record(video, "It is red.", [1, 1, 0, 2])
    original = VideoLlamaDataCollator(tiny_processor(), label_masking="original")
    with pytest.raises(ValueError, match="answer 'priors' need label_masking='answers'"):
        original([record])
    on_question = dict(
        record, conversations=[dict(record["conversations"][0], priors=[{"offset": 0}])] + record["conversations"][1:]
    )
    with pytest.raises(ValueError, match="'priors' belong to assistant"):
        VideoLlamaDataCollator(tiny_processor(), prompt_format="chat_template")([on_question])
