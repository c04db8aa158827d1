"""Peak memory and wall time of weight_diff.py against the original's load-both-models approach.

    python bench/bench_weight_diff.py                  # ~150M-parameter LLaMA-style pair, bfloat16 on disk
    python bench/bench_weight_diff.py --dtype float32  # the same pair stored in float32

Builds a raw model (hidden 768, 12 layers, vocabulary 32000, no pad token) and a "tuned" one (the raw model
resized for [PAD] by train.py's smart_tokenizer_and_embedding_resize, then perturbed), both saved in --dtype.
Each job then runs in its own fresh Python process, one after the other (--repeats times; the highest peak
and the fastest wall time are kept), and reports the process's peak resident memory (VmHWM from
/proc/self/status) and wall time:
  ours      weight_diff.make_diff / weight_diff.recover (streaming with numpy, block by block)
  original  the 2023 approach: both models loaded in float32 with from_pretrained, subtracted or added
            in place, save_pretrained
  baseline  for reference: the imports (torch, transformers) and tokenizer load the original needs
            before it reads a single weight
Everything is written under a temporary directory that is removed at the end.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = pathlib.Path(__file__).resolve().parent.parent

# Run at the end of each child: its peak resident memory, as the kernel counted it.
REPORT_PEAK = """
import json as _json
_status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print("PEAK_KB", _status["VmHWM"].split()[0])
"""

BASELINE = """
import torch
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained("{raw}")
"""

OURS_MAKE_DIFF = """
from alpaca.weights import diff as weight_diff
weight_diff.make_diff("{raw}", "{tuned}", "{out}")
"""

OURS_RECOVER = """
from alpaca.weights import diff as weight_diff
weight_diff.recover("{raw}", "{diff}", "{out}", test_inference=False)
"""

# The original's two scripts share their first half: both models in float32, the raw one grown for [PAD].
ORIGINAL_LOAD_BOTH = """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from alpaca.train.sft import smart_tokenizer_and_embedding_resize
raw = AutoModelForCausalLM.from_pretrained("{raw}", dtype=torch.float32)
other = AutoModelForCausalLM.from_pretrained("{other}", dtype=torch.float32)
raw_tokenizer = AutoTokenizer.from_pretrained("{raw}")
if raw_tokenizer.pad_token is None:
    smart_tokenizer_and_embedding_resize(dict(pad_token="[PAD]"), raw_tokenizer, raw)
raw_state, state = raw.state_dict(), other.state_dict()
"""

ORIGINAL_MAKE_DIFF = ORIGINAL_LOAD_BOTH.replace("{other}", "{tuned}") + """
with torch.no_grad():
    for name in state:
        state[name].add_(-raw_state[name])
other.save_pretrained("{out}")
AutoTokenizer.from_pretrained("{tuned}").save_pretrained("{out}")
"""

ORIGINAL_RECOVER = ORIGINAL_LOAD_BOTH.replace("{other}", "{diff}") + """
with torch.no_grad():
    for name in state:
        state[name].add_(raw_state[name])
    weight_sum = sum(tensor.sum() for tensor in state.values())  # its naive integrity check
other.save_pretrained("{out}")
AutoTokenizer.from_pretrained("{diff}").save_pretrained("{out}")
"""


def build_pair(work: pathlib.Path, dtype_name: str, hidden: int, layers: int, intermediate: int,
               vocab: int) -> tuple[pathlib.Path, pathlib.Path, int]:
    """Save a raw LLaMA-style model with a `vocab`-token tokenizer without pad token, and a tuned copy."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from alpaca.train.sft import smart_tokenizer_and_embedding_resize

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    dtype = getattr(torch, dtype_name)
    raw, tuned = work / "raw", work / "tuned"
    model.to(dtype).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    model.float()
    smart_tokenizer_and_embedding_resize({"pad_token": "[PAD]"}, tokenizer, model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 1e-3)
    model.to(dtype).save_pretrained(tuned)
    tokenizer.save_pretrained(tuned)
    return raw, tuned, parameters


def run_measured(code: str) -> tuple[float, float]:
    """Run `code` in a fresh Python process; return (peak resident memory in MiB, wall time in s)."""
    script = textwrap.dedent(code) + REPORT_PEAK
    started = time.time()
    python_path = os.pathsep.join(filter(None, [str(REPO), str(REPO / "scripts"), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": python_path, "TQDM_DISABLE": "1"})
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"benchmark job failed:\n{script}\n{done.stderr[-3000:]}")
    peak_kb = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_KB")))
    return peak_kb / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="dtype of the raw and tuned checkpoints on disk")
    parser.add_argument("--hidden_size", type=int, default=768, help="model width")
    parser.add_argument("--num_hidden_layers", type=int, default=12, help="decoder layers")
    parser.add_argument("--intermediate_size", type=int, default=2560, help="MLP width")
    parser.add_argument("--vocab_size", type=int, default=32000, help="vocabulary (LLaMA's is 32000)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of every job; the fastest wall time counts (other processes only slow a run)")
    args = parser.parse_args()

    from compare_checkpoints import first_difference

    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-weight-diff-"))
    try:
        started = time.time()
        raw, tuned, parameters = build_pair(work, args.dtype, args.hidden_size, args.num_hidden_layers,
                                            args.intermediate_size, args.vocab_size)
        fp32_mib = parameters * 4 / 2**20
        print(f"model: LLaMA-style, hidden {args.hidden_size}, {args.num_hidden_layers} layers, intermediate "
              f"{args.intermediate_size}, vocab {args.vocab_size} (+[PAD]), untied: {parameters / 1e6:.1f}M "
              f"parameters, {fp32_mib:.0f} MiB in float32; raw and tuned saved in {args.dtype} "
              f"(built in {time.time() - started:.0f} s)")
        paths = {"raw": raw, "tuned": tuned}
        jobs = {
            "baseline (imports + tokenizer)": BASELINE.format(**paths),
            "ours make_diff": OURS_MAKE_DIFF.format(**paths, out=work / "diff-ours"),
            "original make_diff": ORIGINAL_MAKE_DIFF.format(**paths, out=work / "diff-original"),
            "ours recover": OURS_RECOVER.format(**paths, diff=work / "diff-ours", out=work / "rec-ours"),
            "original recover": ORIGINAL_RECOVER.format(**paths, diff=work / "diff-original",
                                                        out=work / "rec-original"),
        }
        runs = {name: [] for name in jobs}
        for _ in range(args.repeats):
            for name in ("rec-ours", "rec-original", "diff-ours", "diff-original"):
                shutil.rmtree(work / name, ignore_errors=True)
            for name, code in jobs.items():
                runs[name].append(run_measured(code))
        results = {name: (max(p for p, _ in rs), min(w for _, w in rs)) for name, rs in runs.items()}
        print(f"\n{'job':32s} {'peak RSS MiB':>12s} {'wall s':>7s}")
        for name, (peak, wall) in results.items():
            print(f"{name:32s} {peak:12.0f} {wall:7.1f}")
        print()
        for task in ("make_diff", "recover"):
            (ours_peak, ours_wall), (orig_peak, orig_wall) = results[f"ours {task}"], results[f"original {task}"]
            print(f"{task}: ours / original: peak RSS {ours_peak / orig_peak:.3f}x, wall {ours_wall / orig_wall:.2f}x; "
                  f"ours' peak = {ours_peak / fp32_mib:.2f} of the float32 model size (target <= 0.50), "
                  f"the original's = {orig_peak / fp32_mib:.2f}")
        difference = first_difference(str(tuned), str(work / "rec-ours"))
        print(f"ours recovered == tuned bit for bit: {difference is None}" + (f" ({difference})" if difference else ""))
        sizes = {name: sum(f.stat().st_size for f in (work / name).glob("*.safetensors")) / 2**20
                 for name in ("diff-ours", "diff-original")}
        print(f"diff size on disk: ours {sizes['diff-ours']:.0f} MiB, original {sizes['diff-original']:.0f} MiB")
        print(json.dumps({"parameters": parameters, "dtype": args.dtype,
                          **{name: {"peak_mib": round(p), "wall_s": round(w, 1)} for name, (p, w) in results.items()}}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
