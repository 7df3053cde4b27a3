"""The README's main command must keep working: run the quickstart as a user would."""

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).parents[1]


def test_quickstart_runs_end_to_end():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(("[", "    "))]
    assert lines[0].startswith("[1] converted the release")
    parity = next(line for line in lines if line.startswith("[3]"))
    video_diff = float(parity.split("video features ")[1].split(",")[0])
    audio_diff = float(parity.split("audio features ")[1])
    assert video_diff < 1e-5 and audio_diff < 1e-5
    assert "input_values (1, 8, 1, 128, 204)" in result.stdout  # the video's sound was used
    assert "answer (random weights" in result.stdout
