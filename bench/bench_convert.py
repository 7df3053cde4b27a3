"""Converter memory/time at FULL size, without the real weights.

Writes a synthetic release (every tensor of `manifest_7b.json` / `manifest_13b.json`, same names, shapes and dtypes,
filled with zeros) to a scratch folder, then runs the converter in a fresh process and reports its wall time and peak
RSS. The point is the memory claim: the converter streams shard by shard, so its peak stays far below the size of the
weights it writes.

    python bench/bench_convert.py --size 7b --scratch /tmp/videollama_release [--dtype bfloat16] [--keep]

Needs ~2.2x the release size of free disk (release + output). Not a test; run by hand.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file


FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference"
DTYPES = {"float16": torch.float16, "float32": torch.float32, "int64": torch.int64, "bfloat16": torch.bfloat16}


def _zeros(spec: dict) -> torch.Tensor:
    return torch.zeros(spec["shape"], dtype=DTYPES[spec["dtype"]])


def write_release(size: str, folder: Path) -> dict[str, Path]:
    manifest = json.loads((FIXTURES / f"manifest_{size}.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for filename, entry in manifest["files"].items():
        keys = entry["keys"]
        if filename.endswith("/"):  # the HF LLaMA folder: one safetensors file per ~4 GB, plus its config
            llama = folder / filename.rstrip("/")
            llama.mkdir(exist_ok=True)
            config = dict(entry["config"])
            (llama / "config.json").write_text(json.dumps(config))
            # the real tokenizer cannot be downloaded here; the fixture's SentencePiece model stands in
            shutil.copy(FIXTURES / "llama" / "tokenizer.model", llama / "tokenizer.model")
            shard, shard_bytes, index = {}, 0, 0
            for name, spec in keys.items():
                shard[name] = _zeros(spec)
                shard_bytes += shard[name].numel() * shard[name].element_size()
                if shard_bytes > 4 * 1024**3:
                    save_file(shard, str(llama / f"model-{index}.safetensors"))
                    shard, shard_bytes, index = {}, 0, index + 1
            if shard:
                save_file(shard, str(llama / f"model-{index}.safetensors"))
            paths["llama"] = llama
            continue
        state = {name: _zeros(spec) for name, spec in keys.items()}
        if filename.startswith(("blip2", "VL_", "AL_")):
            state = {"model": state, "epoch": 1}
        torch.save(state, folder / filename)
        paths[filename.split("_")[0] if not filename.startswith(("VL_", "AL_")) else filename[:2]] = folder / filename
        del state
    return paths


def _rss_anon_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["7b", "13b"], default="7b")
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic release and output")
    args = parser.parse_args()

    start = time.perf_counter()
    paths = write_release(args.size, args.scratch / "release")
    print(f"wrote synthetic {args.size} release in {time.perf_counter() - start:.0f} s")
    out = args.scratch / "converted"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "transformers_videollama.convert",
        "--eva-vit", paths["eva"], "--blip2", paths["blip2"], "--imagebind", paths["imagebind"],
        "--llama", paths["llama"], "--vl-checkpoint", paths["VL"], "--al-checkpoint", paths["AL"],
        "--output", out, "--dtype", args.dtype, "--no-self-check", "--quiet",
    ]  # fmt: skip
    start = time.perf_counter()
    process = subprocess.Popen([str(c) for c in cmd])
    peak_anon = 0.0
    while process.poll() is None:  # sample anonymous memory: what cannot be paged back to the release files
        peak_anon = max(peak_anon, _rss_anon_gb(process.pid))
        time.sleep(0.2)
    if process.returncode:
        raise SystemExit(f"converter failed with exit code {process.returncode}")
    wall = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
    written = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 1024**3
    print("| release | output dtype | written (GB) | converter wall (s) | peak RSS (GB) | peak anonymous RSS (GB) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.size} | {args.dtype} | {written:.1f} | {wall:.0f} | {peak_gb:.2f} | {peak_anon:.2f} |")
    print("(peak RSS counts memory-mapped release pages the kernel can drop; anonymous RSS is the real footprint)")
    if not args.keep:
        shutil.rmtree(args.scratch)


if __name__ == "__main__":
    main()
