"""Data-parallel training: the example entry point under a real `accelerate launch` with 2 CPU processes (gloo).

`accelerate launch --multi_gpu` is accelerate's torchrun launcher; on a machine without GPUs its processes train on
the CPU over gloo (`--cpu` would start a single process). The wrapper runs the unchanged entry point, then each rank
writes its trainable weights and its process-group facts, so the test can check that the ranks agree.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from _videollama_training import TRAIN_SCRIPT, make_dataset, make_model_dir


WRAPPER = """
import importlib.util, os, sys
import torch
spec = importlib.util.spec_from_file_location("train_videollama", {script!r})
module = importlib.util.module_from_spec(spec)
sys.modules["train_videollama"] = module  # Trainer pickles the arguments dataclass
spec.loader.exec_module(module)
trainer = module.run(sys.argv[1:])
state = {{n: p.detach().cpu() for n, p in trainer.model.named_parameters() if p.requires_grad}}
info = {{
    "world_size": torch.distributed.get_world_size(),
    "backend": torch.distributed.get_backend(),
    "rank": trainer.args.process_index,
    "global_step": trainer.state.global_step,
}}
torch.save({{"state": state, "info": info}}, os.path.join(trainer.args.output_dir, f"rank{{info['rank']}}.pt"))
"""


def test_two_process_accelerate_launch(tmp_path):
    model_dir = make_model_dir(tmp_path / "model")
    data = make_dataset(tmp_path / "data", num_records=4)
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(textwrap.dedent(WRAPPER.format(script=str(TRAIN_SCRIPT))))
    out = tmp_path / "out"
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        str(wrapper),
        "--model_name_or_path", str(model_dir), "--train_data", f"jsonl:{data}", "--output_dir", str(out),
        "--stage", "vision-stage2", "--use_lora", "--lora_r", "4", "--max_steps", "3",
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--logging_steps", "1",
        "--save_strategy", "no", "--use_cpu", "--disable_tqdm", "true",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    for r, saved in enumerate(ranks):
        assert saved["info"] == {"world_size": 2, "backend": "gloo", "rank": r, "global_step": 3}
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys() and any("lora_A" in n for n in a) and any("modules_to_save" in n for n in a)
    assert all(torch.equal(a[n], b[n]) for n in a), "the ranks disagree on the trained weights"
    assert (out / "adapter_model.safetensors").is_file()  # rank 0 saved the adapter
