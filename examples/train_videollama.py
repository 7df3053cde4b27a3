"""Fine-tune Video-LLaMA with `transformers.Trainer`: the paper's two stages for either branch, LoRA, multi-process.

    python examples/train_videollama.py --model_name_or_path video-llama-2-7b-hf --stage vision-stage2 \\
        --chat_format llama2 --train_data jsonl:my_data/train.jsonl --output_dir runs/ft --bf16 \\
        --per_device_train_batch_size 4 --gradient_accumulation_steps 8 --learning_rate 3e-5

    python examples/train_videollama.py my_run.yaml            # the same arguments in a YAML or JSON file
    accelerate launch --num_processes 8 examples/train_videollama.py my_run.yaml   # data-parallel (DDP/DeepSpeed/FSDP)

`--stage` picks a preset (`vision-stage1`, `vision-stage2`, `audio-stage1`, `audio-stage2`): which modules train,
caption vs instruction data, frame sampling, caption end symbol and prompts. `--train_data FORMAT:ANNOTATIONS[:MEDIA]`
(repeatable; formats `jsonl`, `webvid`, `image_caption`, `llava`, `videochat`). `--use_lora` adds LoRA adapters on
the LLM (and `--lora_qformers` on the Q-Formers); the stage's modules are saved with the adapter. All other flags are
`TrainingArguments` (`--activation_checkpointing`, `--resume_from_checkpoint`, `--eval_strategy`, ...). See
docs/fine_tuning.md.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

import transformers_videollama as tv


logger = logging.getLogger("train_videollama")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Converted Video-LLaMA folder (or Hub id)."})
    processor_name_or_path: str | None = field(default=None, metadata={"help": "Defaults to the model folder."})
    model_dtype: str = field(
        default="float32",
        metadata={
            "help": "float32 | bfloat16 | float16: dtype of the loaded weights. Trainable parameters are kept in "
            "float32 either way (train with --bf16 for mixed precision)."
        },
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager | sdpa | flash_attention_2"})
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the LLM in 4-bit NF4 (needs bitsandbytes and a CUDA GPU)."}
    )


@dataclass
class DataArguments:
    train_data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "FORMAT:ANNOTATIONS[:MEDIA_DIR], repeatable. Formats: " + ", ".join(sorted(tv.DATA_FORMATS))
        },
    )
    eval_data: list[str] = field(default_factory=list, metadata={"help": "Same syntax as --train_data."})
    eval_split_ratio: float = field(
        default=0.0, metadata={"help": "Hold out this fraction of the training data for evaluation (if no eval_data)."}
    )
    chat_format: str = field(default="vicuna", metadata={"help": "vicuna | llama2: the release's training text."})
    label_masking: str = field(
        default="answers", metadata={"help": "answers (default) | original (the original's drifting masks)."}
    )
    num_frames: int | None = field(default=None, metadata={"help": "Frames per video (default: processor's, 8)."})
    max_length: int | None = field(default=None, metadata={"help": "Instruction text limit (default: preset, 512)."})
    max_caption_tokens: int | None = field(default=None, metadata={"help": "Caption limit (default: preset)."})
    end_sym: str | None = field(default=None, metadata={"help": "Caption end symbol (default: preset)."})
    caption_prompts: str | None = field(
        default=None, metadata={"help": "Prompt set name or file for caption data; 'none' disables (default: preset)."}
    )
    train_augmentation: bool = field(
        default=True, metadata={"help": "Random resized crop (and the preset's frame sampling) on training media."}
    )
    timestamps: bool = field(default=True, metadata={"help": "Timestamp sentence after each video, as the original."})
    prompt_format: str = field(
        default="training",
        metadata={
            "help": "training (the original's training text) | chat_template (the processor's inference prompt, "
            "for models trained from scratch)."
        },
    )


@dataclass
class VideoLlamaTrainingArguments(TrainingArguments):
    stage: str = field(
        default="vision-stage2", metadata={"help": "Preset: " + ", ".join(tv.available_training_presets())}
    )
    trainable_modules: list[str] | None = field(
        default=None, metadata={"help": "Override the preset's trainable modules (names under model.model)."}
    )
    projector_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the video / audio projections into the LLM (default: --learning_rate), "
            "as LLaVA's mm_projector_lr; same schedule."
        },
    )
    use_lora: bool = field(default=False, metadata={"help": "LoRA adapters (PEFT) on the LLM."})
    lora_r: int = field(default=16)
    lora_alpha: int = field(default=32)
    lora_dropout: float = field(default=0.05)
    lora_llm: bool = field(default=True, metadata={"help": "LoRA on the LLM's attention and MLP projections."})
    lora_qformers: bool = field(default=False, metadata={"help": "LoRA on the Q-Formers' attention too."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator reads the raw record columns."}
    )
    cache_frozen_encoders: bool = field(
        default=False,
        metadata={
            "help": "Memoise the frozen EVA ViT + BLIP-2 Q-Former (per frame) and ImageBind audio trunk (per clip) "
            "outputs across epochs (needs --train_augmentation False)."
        },
    )
    cache_frozen_encoders_gb: float = field(default=4.0, metadata={"help": "Memory cap of that cache, in GB."})
    precompute_frozen_features: bool = field(
        default=False,
        metadata={
            "help": "Decode every record once and run the frozen encoders once before training; epochs then run "
            "only what trains (needs --train_augmentation False and no caption prompts)."
        },
    )
    frozen_features_cache: str | None = field(
        default=None,
        metadata={
            "help": "With --precompute_frozen_features: keep each media file's frozen outputs in this folder, so a "
            "later run on the same files (stage 2 after stage 1, a rerun) decodes and encodes none of them again. "
            "Entries are keyed by the file, the frozen encoders' weights and the frame / audio settings."
        },
    )


def _load_data(specs: list[str]) -> datasets.Dataset | None:
    parts = []
    for spec in specs:
        fmt, sep, rest = spec.partition(":")
        if not sep or not rest:
            raise ValueError(f"--train_data/--eval_data {spec!r}: expected FORMAT:ANNOTATIONS[:MEDIA_DIR]")
        annotations, _, media_dir = rest.partition(":")
        parts.append(tv.load_training_data(fmt, annotations, media_dir or None))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def parse_args(argv: list[str]) -> tuple[ModelArguments, DataArguments, VideoLlamaTrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, VideoLlamaTrainingArguments))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def run(argv: list[str] | None = None) -> tv.VideoLlamaTrainer:
    """Parse the arguments, build everything, train (and evaluate); return the trainer."""
    model_args, data_args, args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING)
    set_seed(args.seed)
    preset = tv.load_training_preset(args.stage)
    data_cfg = preset["data"]
    if not data_args.train_data:
        raise ValueError("--train_data is required (FORMAT:ANNOTATIONS[:MEDIA_DIR])")

    # 1. processor: training augmentation is a processor option, on for training only
    processor = AutoProcessor.from_pretrained(model_args.processor_name_or_path or model_args.model_name_or_path)
    processor.video_processor.do_train_augmentation = data_args.train_augmentation
    processor.video_processor.frame_sampling = data_cfg.get("frame_sampling", "uniform")

    # 2. model, frozen as in the paper (or as overridden), optionally with LoRA
    dtype = getattr(torch, model_args.model_dtype)
    load_kwargs = {"dtype": dtype}
    if model_args.attn_implementation:
        load_kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.load_in_4bit:
        from transformers import BitsAndBytesConfig

        load_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=[
                "vision_tower",
                "qformer",
                "video_qformer",
                "audio_tower",
                "audio_qformer",
                "imagebind_vision_tower",
                "video_projection",
                "audio_projection",
                "lm_head",
            ],
        )
    model = AutoModelForImageTextToText.from_pretrained(model_args.model_name_or_path, **load_kwargs)
    if preset["audio_branch_from_images"] and not hasattr(model.model, "imagebind_vision_tower"):
        raise ValueError(
            f"Stage {args.stage!r} feeds the audio Q-Former with ImageBind *vision* embeddings, but "
            f"{model_args.model_name_or_path!r} has no ImageBind vision trunk: convert the release with "
            "--with-imagebind-vision"
        )
    trainable = args.trainable_modules or preset["trainable_modules"]
    tv.freeze_for_training(model, trainable)
    if args.use_lora or model_args.load_in_4bit:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if model_args.load_in_4bit:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(args.activation_checkpointing)
            )
            tv.freeze_for_training(model, trainable)
        config = tv.lora_config(
            model,
            r=args.lora_r,
            alpha=args.lora_alpha,
            dropout=args.lora_dropout,
            lora_llm=args.lora_llm,
            lora_qformers=args.lora_qformers,
            modules_to_save=[m for m in trainable if not (args.lora_qformers and m.endswith("qformer"))],
        )
        model = get_peft_model(model, config)
    for param in model.parameters():  # master weights of what trains stay float32 (mixed precision via --bf16)
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    cache = None
    if args.cache_frozen_encoders:
        if data_args.train_augmentation:
            raise ValueError(
                "--cache_frozen_encoders needs --train_augmentation False: augmented frames differ every epoch, so "
                "the cache would only fill memory"
            )
        cache = tv.cache_frozen_encoders(model, max_bytes=int(args.cache_frozen_encoders_gb * 1024**3))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    logger.info("stage %s: training %d of %d parameters (%s)", args.stage, n_train, n_total, ", ".join(trainable))

    # 3. data (paths only; media decoded lazily by the collator)
    train_dataset = _load_data(data_args.train_data)
    eval_dataset = _load_data(data_args.eval_data)
    if eval_dataset is None and data_args.eval_split_ratio > 0:
        split = train_dataset.train_test_split(test_size=data_args.eval_split_ratio, seed=args.seed)
        train_dataset, eval_dataset = split["train"], split["test"]
    end_sym = data_args.end_sym if data_args.end_sym is not None else data_cfg["end_sym"]
    if isinstance(end_sym, dict):
        end_sym = end_sym[data_args.chat_format]
    prompts = data_args.caption_prompts if data_args.caption_prompts is not None else data_cfg.get("caption_prompts")
    collator = tv.VideoLlamaDataCollator(
        processor,
        chat_format=data_args.chat_format,
        label_masking=data_args.label_masking,
        audio_branch_from_images=preset["audio_branch_from_images"],
        timestamps=data_args.timestamps,
        caption_prompts=tv.caption_prompts(prompts) if prompts and prompts != "none" else None,
        end_sym=end_sym,
        max_length=data_args.max_length or data_cfg.get("max_length", 512),
        max_caption_tokens=data_args.max_caption_tokens or data_cfg.get("max_caption_tokens", 32),
        num_frames=data_args.num_frames,
        prompt_format=data_args.prompt_format,
    )

    if args.frozen_features_cache and not args.precompute_frozen_features:
        raise ValueError("--frozen_features_cache needs --precompute_frozen_features True")
    precomputed = {}
    if args.precompute_frozen_features:  # decode + frozen encoders once; the Trainer then sees ids and features
        if cache is not None:
            raise ValueError("Use one of --precompute_frozen_features and --cache_frozen_encoders")
        kwargs = {
            "batch_size": 16,
            "num_workers": args.dataloader_num_workers,
            "cache_dir": args.frozen_features_cache,
        }
        train_dataset = tv.precompute_frozen_features(model, train_dataset, collator, **kwargs)
        precomputed = {"examples": len(train_dataset), "cache_hits": train_dataset.hits}
        if eval_dataset is not None:
            eval_dataset = tv.precompute_frozen_features(model, eval_dataset, collator, **kwargs)
        collator = tv.PrecomputedFeaturesCollator(collator.pad_id)
        args.dataloader_num_workers, args.dataloader_persistent_workers = 0, False  # nothing left to decode

    # 4. train
    trainer = tv.VideoLlamaTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        processing_class=processor,
        projector_learning_rate=args.projector_learning_rate,
    )
    resume = args.resume_from_checkpoint
    if resume in ("latest", "true", "True"):
        resume = get_last_checkpoint(args.output_dir)
        if resume is None:
            raise ValueError(f"--resume_from_checkpoint latest: no checkpoint-* folder in {args.output_dir!r}")
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    if cache is not None:
        logger.info("frozen-encoder cache: %s", cache.stats())
        metrics["frozen_encoder_cache"] = cache.stats()
    if precomputed:
        metrics["precomputed_features"] = precomputed
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
    trainer.save_model()
    trainer.save_state()
    if trainer.is_world_process_zero():
        processor.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, "train_summary.json"), "w") as handle:
            json.dump({"metrics": metrics, "log_history": trainer.state.log_history}, handle, indent=1)
    return trainer


def main() -> None:
    run()


if __name__ == "__main__":
    main()
