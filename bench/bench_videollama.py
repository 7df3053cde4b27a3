"""Video-LLaMA inference benchmark at a "small" config with the release's real shapes (issue #2).

A benchmark, not a timed test: `python bench/bench_videollama.py [--quick] [--onednn] [--compile]` prints markdown
tables. Random weights (no download), batch 1, `torch.set_num_threads(2)`, `torch.inference_mode()`.

Shapes ("small" config):
    EVA ViT         width 384, depth 6, heads 6, MLP 1675 (EVA's mlp_ratio 4.3637), 224 px, patch 14 -> 257 tokens
    BLIP-2 Q-Former hidden 256, 4 layers, 4 heads, intermediate 1024, cross-attention every 2nd layer, 32 queries
    video Q-Former  hidden 256, 2 layers, 4 heads, intermediate 1024, 32 queries
    ImageBind audio width 256, 4 blocks, 4 heads, MLP 1024, output 256; a 1 x 128 x 204 clip -> 229 tokens
    audio Q-Former  hidden 256, 2 layers, 4 heads, intermediate 1024, 8 queries
    LLaMA           hidden 512, 4 layers, 8 heads, intermediate 1376, vocab 32000
    inputs          8 frames, 8 audio clips, the Vicuna audio+video demo prompt (106 positions: BOS + 38 text,
                    8 audio placeholders, 25 text, 32 video placeholders, 2 text)

Measurements (each the median over rounds, after a warm-up round):
    video    model.get_video_features(pixel_values_videos)                       (1, 8, 3, 224, 224) -> (1, 32, 512)
    audio    model.get_audio_features(input_values)                              (1, 8, 1, 128, 204) -> (1, 8, 512)
    prompt   model(input_ids, attention_mask, pixel_values_videos, input_values)  106 positions, encoders included
    request  model.generate(..., max_new_tokens=32, min_new_tokens=32, do_sample=False), encoders included
             (each encoder runs once per generate() call, not per new token)

The machine is shared and noisy, so the design favours in-run comparisons:
    1. timing: ONE process holds the float32 and bfloat16 models and measures every configuration once per round,
       round-robin, so slow phases hit all configurations alike; ratios are medians of per-round ratios;
    2. memory: one fresh process per configuration (RSS after imports, after building, peak during requests);
    3. a GEMM calibration (GFLOP/s of an MKL float32 matmul of the ViT's MLP shape) before and after the timing phase,
       and the share of the CPUs other processes used meanwhile, say how quiet the machine was.

Request variants measured in the same rounds (float32, sdpa): plain `nn.Linear` decode steps (the baseline of the
model's `DecodeStepLinear`), a static cache.

Optional experiments (float32, sdpa; not changes to the model):
    --onednn   route float32 `F.linear` through oneDNN (`torch.ops.mkldnn._linear_pointwise`) instead of MKL
    --compile  `torch.compile` the language model (static cache); its first call (compilation) is reported apart
    --profile  print torch.profiler's top operators of one float32 request (where the time goes)
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time


# The original implementation at exactly this config on this 2-core CPU (float32, 2 threads), from issue #2. Its
# "generate" figure is the LLM part only (the encoders are reported separately), its prompt forward likewise.
ORIGINAL = {"video": 0.415, "audio": 0.101, "prompt_llm": 0.056, "generate_llm": 0.510, "rss_build_mb": 684}
ORIGINAL_REQUEST = ORIGINAL["video"] + ORIGINAL["audio"] + ORIGINAL["generate_llm"]  # 1.026 s
TARGET_SPEEDUP = 1.5

NUM_FRAMES, NUM_CLIPS, NEW_TOKENS = 8, 8, 32
VIDEO_TOKEN, AUDIO_TOKEN = 32000, 32001
PROMPT_LAYOUT = (("bos", 1), ("text", 38), ("audio", 8), ("text", 25), ("video", 32), ("text", 2))  # 106 positions
MEASUREMENTS = ("video", "audio", "prompt", "request")
CALIBRATION_SHAPE = (2056, 384, 1675)  # 8 frames x 257 tokens, ViT width -> ViT MLP width


def small_config():
    from transformers_videollama import VideoLlamaConfig

    qformer = {"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024}
    return VideoLlamaConfig(
        vision_config={
            "hidden_size": 384,
            "intermediate_size": int(384 * 4.3637),
            "num_hidden_layers": 6,
            "num_attention_heads": 6,
            "image_size": 224,
            "patch_size": 14,
        },
        qformer_config={**qformer, "num_hidden_layers": 4, "num_query_tokens": 32, "cross_attention_frequency": 2},
        video_qformer_config={
            **qformer,
            "num_hidden_layers": 2,
            "num_query_tokens": 32,
            "cross_attention_frequency": 1,
        },
        audio_qformer_config={
            **qformer,
            "num_hidden_layers": 2,
            "num_query_tokens": 8,
            "cross_attention_frequency": 1,
        },
        audio_config={
            "hidden_size": 256,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 1024,
            "projection_dim": 256,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": 32000,
            "hidden_size": 512,
            "intermediate_size": 1376,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 8,
            "max_position_embeddings": 2048,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        max_frame_pos=32,
        max_audio_clips=8,
        video_token_index=VIDEO_TOKEN,
        audio_token_index=AUDIO_TOKEN,
    )


def make_inputs() -> dict:
    import torch

    gen = torch.Generator().manual_seed(0)
    pieces = []
    for kind, length in PROMPT_LAYOUT:
        if kind == "bos":
            pieces.append(torch.ones(length, dtype=torch.long))
        elif kind == "text":
            pieces.append(torch.randint(3, 32000, (length,), generator=gen))
        else:
            pieces.append(torch.full((length,), AUDIO_TOKEN if kind == "audio" else VIDEO_TOKEN, dtype=torch.long))
    input_ids = torch.cat(pieces)[None]  # (1, 106)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values_videos": torch.randn(1, NUM_FRAMES, 3, 224, 224, generator=gen),
        "input_values": torch.randn(1, NUM_CLIPS, 1, 128, 204, generator=gen),
    }


GENERATE_KWARGS = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}


def build_model(dtype_name: str, attn: str):
    import torch

    from transformers_videollama import VideoLlamaForConditionalGeneration

    torch.manual_seed(0)
    model = VideoLlamaForConditionalGeneration._from_config(
        small_config(), dtype=getattr(torch, dtype_name), attn_implementation=attn
    )
    return model.eval()


def measurement_fns(model, inputs: dict, generate_kwargs: dict | None = None) -> dict:
    generate_kwargs = {**GENERATE_KWARGS, **(generate_kwargs or {})}
    return {
        "video": lambda: model.get_video_features(inputs["pixel_values_videos"]),
        "audio": lambda: model.get_audio_features(inputs["input_values"]),
        "prompt": lambda: model(**inputs),
        "request": lambda: model.generate(**inputs, **generate_kwargs),
    }


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------------------------
# Experiments that are not model changes
# ----------------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def onednn_linear():
    """Route float32 CPU `F.linear` (inference only) through oneDNN instead of MKL; the arithmetic stays float32."""
    import torch
    import torch.nn.functional as F

    mkl_linear = F.linear

    def linear(x, weight, bias=None):
        if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return mkl_linear(x, weight, bias)

    F.linear = linear
    try:
        yield
    finally:
        F.linear = mkl_linear


@contextlib.contextmanager
def plain_linears(model):
    """The language model's `DecodeStepLinear`s as plain `nn.Linear`s (decode steps through MKL's matrix-vector
    product): the baseline of the model's own decode-step change."""
    from torch import nn

    from transformers_videollama.modeling_videollama import DecodeStepLinear

    swapped = [m for m in model.modules() if type(m) is DecodeStepLinear]
    for module in swapped:
        module.__class__ = nn.Linear
    try:
        yield
    finally:
        for module in swapped:
            module.__class__ = DecodeStepLinear


@contextlib.contextmanager
def compiled_language_model(model, compiled_forward):
    language_model = model.model.language_model
    language_model.forward = compiled_forward
    try:
        yield
    finally:
        del language_model.forward  # back to the class's forward


# ----------------------------------------------------------------------------------------------------------------------
# Machine state
# ----------------------------------------------------------------------------------------------------------------------
def gemm_gflops(seconds: float = 1.0) -> float:
    """Median GFLOP/s of a float32 (MKL) matmul of the ViT's MLP shape: how much CPU this process is getting."""
    import torch

    m, k, n = CALIBRATION_SHAPE
    a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
    torch.matmul(a, b, out=out)
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        rates.append(2 * m * k * n / _timed(lambda: torch.matmul(a, b, out=out)) / 1e9)
    return statistics.median(rates)


def _cpu_jiffies() -> tuple[int, int, int]:
    """(all jiffies of the machine, busy jiffies of the machine, jiffies of this process)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return busy + idle + iowait, busy, int(fields[11]) + int(fields[12])  # own: utime + stime


# ----------------------------------------------------------------------------------------------------------------------
# Workers (fresh processes)
# ----------------------------------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS watermark (VmHWM) so the requests' peak is not the build's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset_ok: bool) -> float:
    if reset_ok:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole-process peak (kB on Linux)


def memory_worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import transformers_videollama  # noqa: F401  (imports counted in the baseline RSS)

    inputs = make_inputs()
    result = {"rss_imports_mb": _rss_mb()}
    # 1. build and measure RSS
    model = build_model(spec["dtype"], spec["attn"])
    result["rss_build_mb"] = _rss_mb()
    # 2. peak RSS over two requests (the first also allocates everything lazily initialised)
    reset_ok = _reset_peak_rss()
    with torch.inference_mode():
        for _ in range(2):
            model.generate(**inputs, **GENERATE_KWARGS)
    result["rss_peak_mb"] = _peak_rss_mb(reset_ok)
    return result


def timing_worker(spec: dict) -> dict:
    import copy

    import torch

    torch.set_num_threads(spec["threads"])
    inputs = make_inputs()
    configs = [tuple(c) for c in spec["configs"]]
    models = {"float32": build_model("float32", "sdpa")}
    if any(dtype == "bfloat16" for _, dtype in configs):
        models["bfloat16"] = copy.deepcopy(models["float32"]).to(torch.bfloat16)

    # Variants of the float32/sdpa request, measured in the same rounds: name -> (context, generate kwargs)
    fp32 = models["float32"]
    variants = {
        "plain nn.Linear decode steps (MKL matrix-vector)": (lambda: plain_linears(fp32), {}),
        "static cache": (contextlib.nullcontext, {"cache_implementation": "static"}),
    }
    if spec["onednn"]:
        variants["oneDNN linear"] = (onednn_linear, {})
        variants["oneDNN linear + static cache"] = (onednn_linear, {"cache_implementation": "static"})
    extra = {}
    if spec["compile"]:
        compiled = torch.compile(fp32.model.language_model.forward, dynamic=False)
        variants["torch.compile(LM) + static cache"] = (
            lambda: compiled_language_model(fp32, compiled),
            {"cache_implementation": "static"},
        )

    times = {c: {m: [] for m in MEASUREMENTS} for c in configs}
    times.update({v: {"request": []} for v in variants})
    tokens = {}
    jiffies_before = _cpu_jiffies()
    gflops_before = gemm_gflops()
    with torch.inference_mode():
        if spec["compile"]:  # compilation happens on the first call(s): report it, keep it out of the medians
            fp32.set_attn_implementation("sdpa")
            request = measurement_fns(fp32, inputs, {"cache_implementation": "static"})["request"]
            with compiled_language_model(fp32, compiled):
                extra["compile_first_request_s"] = _timed(request)  # prefill and decode graphs
                request()  # first runs of the compiled kernels
        # round 0 is the warm-up
        for round_index in range(spec["repeats"] + 1):
            for attn, dtype in configs:
                model = models[dtype]
                model.set_attn_implementation(attn)
                for name, fn in measurement_fns(model, inputs).items():
                    elapsed = _timed(fn)
                    if round_index:
                        times[(attn, dtype)][name].append(elapsed)
            fp32.set_attn_implementation("sdpa")
            for name, (context, kwargs) in variants.items():
                with context():
                    elapsed = _timed(measurement_fns(fp32, inputs, kwargs)["request"])
                if round_index:
                    times[name]["request"].append(elapsed)
        # float32 exactness: prompt logits of every float32 kernel choice against sdpa/MKL (the parity-tested path)
        fp32.set_attn_implementation("sdpa")
        reference = fp32(**inputs).logits.float()
        logits_diff = {}
        for attn, dtype in configs:
            if dtype == "float32":
                fp32.set_attn_implementation(attn)
                logits_diff[f"{attn}/{dtype}"] = (fp32(**inputs).logits - reference).abs().max().item()
        fp32.set_attn_implementation("sdpa")
        if spec["onednn"]:
            with onednn_linear():
                logits_diff["oneDNN linear"] = (fp32(**inputs).logits - reference).abs().max().item()
        # encoder calls per request (must be 1 each: generate() must not re-encode per new token)
        encoder_calls = {"vision_tower": 0, "audio_tower": 0}
        hooks = [
            getattr(fp32.model, name).register_forward_hook(
                lambda *_, name=name: encoder_calls.update({name: encoder_calls[name] + 1})
            )
            for name in encoder_calls
        ]
        fp32.generate(**inputs, **GENERATE_KWARGS)
        for hook in hooks:
            hook.remove()
        # greedy tokens of every configuration, for the equality check
        for attn, dtype in configs:
            models[dtype].set_attn_implementation(attn)
            tokens[f"{attn}/{dtype}"] = models[dtype].generate(**inputs, **GENERATE_KWARGS)[0, -NEW_TOKENS:].tolist()
        fp32.set_attn_implementation("sdpa")
        for name, (context, kwargs) in variants.items():
            with context():
                tokens[name] = fp32.generate(**inputs, **GENERATE_KWARGS, **kwargs)[0, -NEW_TOKENS:].tolist()
    gflops_after = gemm_gflops()
    total, busy, own = (after - before for after, before in zip(_cpu_jiffies(), jiffies_before))
    other_share = max(0, busy - own) / max(1, total)  # of the machine's CPU capacity
    return {
        "times": {"/".join(k) if isinstance(k, tuple) else k: v for k, v in times.items()},
        "tokens": tokens,
        "logits_diff": logits_diff,
        "encoder_calls": encoder_calls,
        "logits_scale": reference.abs().max().item(),
        "gflops": [gflops_before, gflops_after],
        "other_busy_share": other_share,
        **extra,
    }


def profile_worker(spec: dict) -> dict:
    """Where the time of one float32 request goes: torch.profiler's top operators (printed to stderr)."""
    import torch
    from torch.profiler import profile

    torch.set_num_threads(spec["threads"])
    inputs = make_inputs()
    model = build_model("float32", spec["attn"])
    request = measurement_fns(model, inputs)["request"]
    with torch.inference_mode():
        request()
        with profile() as prof:
            elapsed = _timed(request)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    print(f"float32/{spec['attn']} request under the profiler: {elapsed:.3f} s\n{table}", file=sys.stderr)
    return {"request_s": elapsed}


def run_worker(kind: str, spec: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": str(spec["threads"])},
    )
    if kind == "profile":
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker {spec} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return statistics.median(values)


def _paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a/b (> 1: b is faster)."""
    return statistics.median(x / y for x, y in zip(a, b))


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report(timing: dict, memory: dict, args) -> str:
    times = timing["times"]
    out = []
    rows = []
    for key, t in times.items():
        if "video" not in t:
            continue
        attn, dtype = key.split("/")
        video, audio, prompt, request = (_median(t[m]) for m in MEASUREMENTS)
        llm = _median([r - v - a for r, v, a in zip(t["request"], t["video"], t["audio"])])  # per round
        rows.append(
            [
                attn,
                dtype,
                f"{video:.3f}",
                f"{audio:.3f}",
                f"{prompt:.3f}",
                f"**{request:.3f}**",
                f"{min(t['request']):.3f}",
                f"{llm:.3f}",
                f"{NEW_TOKENS / llm:.0f}" if llm > 0 else "-",
                f"{ORIGINAL_REQUEST / request:.2f}x",
            ]
        )
    rows.append(
        [
            "original (issue #2)",
            "float32",
            f"{ORIGINAL['video']:.3f}",
            f"{ORIGINAL['audio']:.3f}",
            f"{ORIGINAL['prompt_llm']:.3f} (LLM only)",
            f"{ORIGINAL_REQUEST:.3f} (sum)",
            "-",
            f"{ORIGINAL['generate_llm']:.3f}",
            f"{NEW_TOKENS / ORIGINAL['generate_llm']:.0f}",
            "1.00x",
        ]
    )
    out.append(f"### Time (s), median of {args.repeats} rounds after a warm-up round\n")
    out.append(
        _table(
            [
                "attention",
                "dtype",
                "video encode",
                "audio encode",
                "prompt forward (incl. encoders)",
                "request: encoders + 32 greedy tokens",
                "request, best round",
                "LLM part (request - encoders, per round)",
                "tokens/s (LLM part)",
                "request vs original",
            ],
            rows,
        )
    )

    # variants of the float32/sdpa request
    base = times["sdpa/float32"]["request"]
    variant_rows = [
        [
            "sdpa / float32 / dynamic cache (default)",
            f"{_median(base):.3f}",
            f"{min(base):.3f}",
            "1.00x",
            f"{ORIGINAL_REQUEST / _median(base):.2f}x",
        ]
    ]
    for key, t in times.items():
        if "video" in t:
            continue
        variant_rows.append(
            [
                key,
                f"{_median(t['request']):.3f}",
                f"{min(t['request']):.3f}",
                f"{_paired_ratio(base, t['request']):.2f}x",
                f"{ORIGINAL_REQUEST / _median(t['request']):.2f}x",
            ]
        )
    out.append("\n### Request variants (float32, sdpa), same rounds\n")
    out.append(
        _table(
            ["variant", "request (s)", "best round (s)", "speedup vs default (paired)", "vs original"], variant_rows
        )
    )
    if "compile_first_request_s" in timing:
        out.append(f"\ntorch.compile: first request (compilation) took {timing['compile_first_request_s']:.1f} s.")

    # in-run ratios
    pairs = [
        ("sdpa vs eager, float32", "eager/float32", "sdpa/float32"),
        ("sdpa vs eager, bfloat16", "eager/bfloat16", "sdpa/bfloat16"),
        ("bfloat16 vs float32, sdpa", "sdpa/float32", "sdpa/bfloat16"),
        ("bfloat16 vs float32, eager", "eager/float32", "eager/bfloat16"),
    ]
    ratio_rows = []
    for name, a, b in pairs:
        if a in times and b in times:
            ratio_rows.append([name] + [f"{_paired_ratio(times[a][m], times[b][m]):.2f}x" for m in MEASUREMENTS])
    out.append("\n### In-run speedups (median of per-round ratios; > 1: the second is faster)\n")
    out.append(_table(["comparison", "video", "audio", "prompt", "request"], ratio_rows))

    # memory
    if memory:
        mem_rows = [
            [
                key.replace("/", " / "),
                f"{m['rss_imports_mb']:.0f}",
                f"{m['rss_build_mb']:.0f}",
                f"{m['rss_build_mb'] - m['rss_imports_mb']:.0f}",
                f"{m['rss_peak_mb']:.0f}",
                f"{m['rss_peak_mb'] - m['rss_build_mb']:.0f}",
            ]
            for key, m in memory.items()
        ]
        out.append("\n### Memory (MB; one fresh process per row)\n")
        out.append(
            _table(
                [
                    "attention / dtype",
                    "RSS after imports",
                    "RSS after build",
                    "model (build - imports)",
                    "peak RSS in requests",
                    "request overhead (peak - build)",
                ],
                mem_rows,
            )
        )
        out.append(
            f"\nOriginal (issue #2): {ORIGINAL['rss_build_mb']} MB RSS after building the model (a CPU-only "
            "torch); here the imports alone (CUDA build of torch, transformers) take the first column."
        )

    # summary
    fp32 = {k: _median(v["request"]) for k, v in times.items() if k.endswith("/float32")}
    best_key = min(fp32, key=fp32.get)
    best = fp32[best_key]
    gflops = timing["gflops"]
    out.append(
        f"\nfloat32 request ({best_key.split('/')[0]}, default generate): {best:.3f} s vs the original's "
        f"{ORIGINAL_REQUEST:.3f} s = {ORIGINAL_REQUEST / best:.2f}x; target {TARGET_SPEEDUP}x "
        f"(<= {ORIGINAL_REQUEST / TARGET_SPEEDUP:.3f} s): {'met' if ORIGINAL_REQUEST / best >= TARGET_SPEEDUP else 'not met'}."
    )
    fp32_tokens = [t for k, t in timing["tokens"].items() if "bfloat16" not in k]
    out.append(
        f"float32 greedy tokens identical across attention kernels and variants: "
        f"{all(t == fp32_tokens[0] for t in fp32_tokens)}; prompt logits (max |logit| "
        f"{timing['logits_scale']:.2f}), max abs difference to sdpa/MKL: "
        + ", ".join(f"{k} {v:.1e}" for k, v in timing["logits_diff"].items())
        + "."
    )
    out.append(f"Encoder forward calls per request: {timing['encoder_calls']} (1 each: no re-encoding per token).")
    out.append(
        f"Machine: {args.threads} threads; MKL float32 GEMM {CALIBRATION_SHAPE} at {gflops[0]:.0f} GFLOP/s before and "
        f"{gflops[1]:.0f} GFLOP/s after the timing phase; other processes used {100 * timing['other_busy_share']:.0f}% "
        "of the CPU time meanwhile (absolute times scale with both; the in-run ratios much less)."
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5, --quick 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--onednn", action="store_true", help="experiment: float32 linears through oneDNN")
    parser.add_argument("--compile", action="store_true", help="experiment: torch.compile the LM (slow to build)")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory processes")
    parser.add_argument("--profile", action="store_true", help="also print torch.profiler's top ops of one request")
    parser.add_argument("--json", default=None, help="also write the raw results to this file")
    parser.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker is not None:
        kind, spec = args.worker
        worker = {"memory": memory_worker, "timing": timing_worker, "profile": profile_worker}[kind]
        print(json.dumps(worker(json.loads(spec))))
        return

    args.repeats = args.repeats or (3 if args.quick else 5)
    configs = [(attn, dtype) for dtype in ("float32", "bfloat16") for attn in ("eager", "sdpa")]
    started = time.perf_counter()
    spec = {
        "configs": configs,
        "repeats": args.repeats,
        "threads": args.threads,
        "onednn": args.onednn,
        "compile": args.compile,
    }
    print(f"timing {len(configs)} configurations, {args.repeats} rounds ...", file=sys.stderr)
    timing = run_worker("timing", spec)
    memory = {}
    if not args.no_memory:
        for attn, dtype in configs:
            print(f"memory {attn}/{dtype} ...", file=sys.stderr)
            memory[f"{attn}/{dtype}"] = run_worker("memory", {"attn": attn, "dtype": dtype, "threads": args.threads})
    if args.profile:
        run_worker("profile", {"attn": "sdpa", "threads": args.threads})
    print(f"done in {time.perf_counter() - started:.0f} s\n", file=sys.stderr)
    print(report(timing, memory, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"timing": timing, "memory": memory}, f, indent=1)


if __name__ == "__main__":
    main()
