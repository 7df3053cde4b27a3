"""The bundled small Video-LLaMA on unseen videos of the held-out split: what it achieves, as regression floors.

The held-out split has colour-shape and shape-motion pairs the model never saw in training, and resolutions, frame
rates, durations and audio formats beyond training. The sample is fixed (seed) and differs from the one the recipe
reports in the README. Exact counts on this sample (greedy, float32, CPU): sound 33/33, no sound 7/7, count 40/40,
colour 54/54, shape 39/40, motion 51/54. On the whole held-out split (README) the model meets every target: colour
99.5 % and shape 96.7 % (>= 95 %), motion 95.5 % (>= 90 %), sound and no sound 100 % (>= 90 %). The floors below:
the issue's targets for sound and no sound; for colour, shape and motion what the model does on this sample less
one answer (53/54, 38/40, 50/54) for float noise on another CPU, each at or above its target.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transformers_videollama import world_videollama as world


ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "transformers_videollama" / "bundled" / "videollama-world-small"
BOUNDS = {"sound": 0.90, "no_sound": 0.90, "count": 0.95, "colour": 0.98, "shape": 0.95, "motion": 0.92}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout")
    qa = world.generate_split(out, "heldout", 40, seed=1234)
    records = [json.loads(line) for line in qa.read_text().splitlines()]
    return [dict(r, video=str(out / r["video"])) for r in records]


def test_bundled_model_accuracy_on_heldout_videos(heldout):
    from transformers_videollama.cli_videollama import evaluate_model, load_model

    model, processor = load_model(str(BUNDLED), device="cpu", dtype="float32")
    report = evaluate_model(model, processor, heldout, batch_size=16, progress=False)
    per_type = report["per_type"]
    for kind, bound in BOUNDS.items():
        assert per_type[kind]["count"] >= 5, (kind, per_type[kind])
        assert per_type[kind]["accuracy"] >= bound, (kind, per_type[kind], bound)


def test_bundled_checkpoint_is_small_and_self_contained():
    files = {p.name: p.stat().st_size for p in BUNDLED.iterdir()}
    assert sum(files.values()) <= 30 * 1024**2, files
    assert "model.safetensors" in files and "config.json" in files
    assert any(name.startswith("modeling_videollama") for name in files)  # remote code travels with it
    summary = json.loads((BUNDLED / "recipe_summary.json").read_text())
    assert summary["smoke"] is False


def test_bundled_remote_code_is_the_package_code():
    """The copies the remote-code folder carries must be the package's modules: without this a fix to the package
    would silently not reach users who load the bundle with `trust_remote_code=True` (re-export to refresh them)."""
    copies = sorted(BUNDLED.glob("*.py"))
    assert copies
    package = ROOT / "src" / "transformers_videollama"
    stale = [p.name for p in copies if p.read_bytes() != (package / p.name).read_bytes()]
    assert not stale, f"re-export the bundled model: {stale} differ from the package"


def test_readme_example_answers_correctly_through_the_cli():
    """The README's first command, as a fresh install runs it (console script, default model, no network)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "transformers_videollama.cli_videollama",
            "chat",
            str(ROOT / "examples" / "media" / "green_circle.mp4"),
            "What is happening in this video?",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "A green circle moving right. The sound is a high tone."
