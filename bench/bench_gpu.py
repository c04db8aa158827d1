"""Training throughput of the Alpaca recipe on one CUDA GPU: tokens/s, MFU and peak memory for random padded batches,
group_by_length and padding_free, and the projected wall time of the full 3-epoch Alpaca-7B recipe on 4 and 8 GPUs.

    python bench/bench_gpu.py                        # one CUDA GPU, no network: under 8 minutes
    python bench/bench_gpu.py --seconds_per_mode 60  # shorter
    python bench/bench_gpu.py --dry_run              # anywhere: the plan, model sizes and FLOP arithmetic; no training
    python bench/bench_gpu.py --smoke                # anywhere: the whole flow on a tiny model on the CPU, in seconds

The model is a randomly initialised LLaMA-architecture model of about 1B parameters (LLaMA-7B's shape, narrower and
shallower: hidden 2048, 16 layers, 32 heads, MLP 5632, vocabulary 32,000), built on the GPU, nothing downloaded. It
trains as train.py trains LLaMA-7B: fp32 weights under --bf16 mixed precision, AdamW, per-device batch 4, 8
accumulation steps, through train.py's own Trainer, collators, length-grouped sampler and throughput callback. The
data are 52,002 synthetic examples whose token counts follow Alpaca's with LLaMA's tokenizer (about 127 tokens per
example, 6.6M per epoch; prompt tokens masked). padding_free uses the best variable-length attention the installed
packages offer: flash_attention_3 or flash_attention_2 when flash-attn is installed, else torch's flex_attention
(compiled, skipping the blocks outside each sequence), which is in the pinned torch. The output says which.

Each mode trains for --seconds_per_mode (the first --warmup_steps optimizer steps are not measured) within a total
budget of --max_total_seconds. The projection divides the 7B recipe's model FLOPs (throughput.py's formula: 6N plus
the attention term) by N GPUs x the peak x the MFU measured here; it assumes the 7B model reaches the MFU of this
1B one and that FSDP's communication hides behind compute, neither measured on one GPU.
"""

import argparse
import gc
import math
import pathlib
import random
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime

import torch
import transformers
from transformers import DataCollatorWithFlattening, LlamaConfig, LlamaForCausalLM, TrainerCallback

from alpaca.train import sft as train
from alpaca.train import throughput

REPO = pathlib.Path(__file__).resolve().parent.parent

ALPACA_EXAMPLES = 52002
ALPACA_TOKENS_PER_EPOCH = 6.6e6  # with LLaMA's tokenizer and the Alpaca template
RECIPE_EPOCHS = 3
MODES = ("random batches", "group_by_length", "padding_free")


def bench_config(smoke: bool = False) -> LlamaConfig:
    """The ~1B LLaMA-architecture model timed here (a tiny one for --smoke)."""
    if smoke:
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
    return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048)


def llama7b_config() -> LlamaConfig:
    """LLaMA-7B's shape, with the [PAD] row train.py adds (32,001 tokens)."""
    return LlamaConfig(vocab_size=32001, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32)


def llama_parameter_count(config: LlamaConfig) -> dict[str, int]:
    """Parameters of LlamaForCausalLM(config) by arithmetic: {"total", "matmul"} (matmul: all but the input
    embedding table, which is a lookup, unless it is tied to the output layer)."""
    d, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    attention = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d
    if config.attention_bias:
        attention += heads * head_dim + 2 * kv_heads * head_dim + d
    mlp = 3 * d * config.intermediate_size + (2 * config.intermediate_size + d if config.mlp_bias else 0)
    per_layer = attention + mlp + 2 * d  # + the two RMSNorm weights
    embedding = config.vocab_size * d
    body = config.num_hidden_layers * per_layer + d  # + the final norm
    if config.tie_word_embeddings:
        return {"total": body + embedding, "matmul": body + embedding}
    return {"total": body + 2 * embedding, "matmul": body + embedding}


def alpaca_like_lengths(n: int, seed: int = 0, max_length: int = 512) -> list[tuple[int, int]]:
    """(prompt tokens, total tokens) of n examples shaped like Alpaca with LLaMA's tokenizer: a template of ~40
    tokens, an instruction of ~18, an input of ~30 on 40% of them, an output log-normal around 40 (mean ~60)."""
    rng = random.Random(seed)
    lengths = []
    for _ in range(n):
        prompt = 40 + max(3, round(rng.gauss(18, 6))) + (max(3, round(rng.gauss(30, 12))) if rng.random() < 0.4 else 0)
        output = max(1, round(rng.lognormvariate(math.log(40), 0.9)))
        lengths.append((min(prompt, max_length - 1), min(prompt + output + 1, max_length)))  # + eos
    return lengths


class SyntheticAlpaca(torch.utils.data.Dataset):
    """Random token ids with Alpaca's lengths; labels mask the prompt, as train.preprocess does."""

    def __init__(self, lengths: list[tuple[int, int]], vocab_size: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        total = sum(n for _, n in lengths)
        flat = torch.randint(3, vocab_size, (total,), generator=generator)
        self.input_ids = list(flat.split([n for _, n in lengths]))
        self.labels = [ids.clone() for ids in self.input_ids]
        for label, (prompt, _) in zip(self.labels, lengths, strict=True):
            label[:prompt] = train.IGNORE_INDEX
        self.lengths = [n for _, n in lengths]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i) -> dict:
        return dict(input_ids=self.input_ids[i], labels=self.labels[i])


def varlen_attention(device: str) -> tuple[str, str]:
    """(attn_implementation, why) for padding_free: the best kernel that attends within each packed sequence."""
    import importlib.util

    if device == "cuda" and importlib.util.find_spec("flash_attn_interface"):
        return "flash_attention_3", "flash-attn 3 is installed"
    if device == "cuda" and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2", "flash-attn 2 is installed"
    if device == "cuda":
        return "flex_attention", "no flash-attn installed; torch's flex_attention skips blocks outside each sequence"
    return "sdpa", "on the CPU: a dense block mask over the flattened batch (no variable-length kernel)"


class Measure(TrainerCallback):
    """Stops the run after `seconds` (and at least 2 steps past the warm-up), and snapshots the throughput
    callback's totals after `warmup` steps and at the end, so that the measurement leaves out start-up and
    compilation."""

    def __init__(self, meter: throughput.ThroughputCallback, seconds: float, warmup: int):
        self.meter, self.seconds, self.warmup = meter, seconds, warmup
        self.start = time.perf_counter()
        self.snapshots = []

    def on_step_end(self, args, state, control, **kwargs):
        # at least 2 measured steps, however slow the machine
        if time.perf_counter() - self.start >= self.seconds and state.global_step >= self.warmup + 2:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in (logs or {}) and (state.global_step == self.warmup or control.should_training_stop):
            self.snapshots.append((time.perf_counter(), self.meter.totals.clone(), self.meter.flops_total,
                                   state.global_step))


def run_mode(mode: str, config: LlamaConfig, dataset: SyntheticAlpaca, args, seconds: float, attention: str,
             output_dir: str) -> dict:
    """Train in one mode for `seconds`; its steady-state figures."""
    cuda = not args.smoke
    torch.manual_seed(0)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    config = LlamaConfig(**{**config.to_dict(), "use_cache": False})
    with torch.device("cuda" if cuda else "cpu"):  # built in place, in fp32 (the recipe's master weights)
        model = transformers.AutoModelForCausalLM.from_config(
            config, attn_implementation=attention if mode == "padding_free" else "sdpa", dtype=torch.float32)
    training_args = train.TrainingArguments(
        output_dir=output_dir, use_cpu=not cuda, bf16=cuda, tf32=cuda or None,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=2e-5, weight_decay=0.0,
        warmup_steps=0.03, lr_scheduler_type="cosine", max_steps=10**6, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, seed=42,
        train_sampling_strategy="group_by_length" if mode == "group_by_length" else "random")
    collator = (DataCollatorWithFlattening(return_flash_attn_kwargs=attention.startswith("flash"))
                if mode == "padding_free" else train.DataCollatorForSupervisedDataset(PadOnly()))
    trainer = train.SupervisedTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    meter = throughput.add_throughput_callback(trainer, args.peak_tflops)
    measure = Measure(meter, seconds, args.warmup_steps)
    trainer.add_callback(measure)
    trainer.remove_callback(transformers.PrinterCallback)  # a line per step; the summary below says it all
    print(f"{mode}: training for {seconds:.0f} s ...", file=sys.stderr, flush=True)
    trainer.train()
    peak_memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    del trainer, model
    gc.collect()
    (t0, totals0, flops0, step0), (t1, totals1, flops1, step1) = measure.snapshots[0], measure.snapshots[-1]
    seconds = t1 - t0
    real, processed, _ = (totals1 - totals0).tolist()
    flops = flops1 - flops0
    return dict(real_tps=real / seconds, processed_tps=processed / seconds, share=real / processed,
                mfu=flops / seconds / (meter.peak_tflops * 1e12) if meter.peak_tflops else None,
                memory_gib=peak_memory, steps=step1 - step0, seconds=seconds)


class PadOnly:
    """What DataCollatorForSupervisedDataset needs of a tokenizer: the pad id (0, never drawn as a token here)."""

    pad_token_id = 0


def recipe_flops(lengths: list[tuple[int, int]]) -> float:
    """Model FLOPs of the 3-epoch Alpaca-7B recipe, with this data's squared lengths scaled to 6.6M tokens/epoch."""
    tokens = sum(n for _, n in lengths)
    scale = ALPACA_TOKENS_PER_EPOCH / tokens
    squares = sum(n * n for _, n in lengths) * scale
    config = llama7b_config()
    n = llama_parameter_count(config)["matmul"]
    return RECIPE_EPOCHS * throughput.model_flops(ALPACA_TOKENS_PER_EPOCH, squares, n, n, config.num_hidden_layers,
                                                  config.hidden_size)


def print_plan(config: LlamaConfig, lengths: list[tuple[int, int]], args, attention: tuple[str, str]) -> None:
    counts = llama_parameter_count(config)
    with torch.device("meta"):
        built = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    mean_length = sum(n for _, n in lengths) / len(lengths)
    squares = sum(n * n for _, n in lengths) / len(lengths)
    per_token = 6 * counts["matmul"] + 12 * config.num_hidden_layers * config.hidden_size * squares / mean_length
    seven = llama_parameter_count(llama7b_config())
    print(f"model: LLaMA architecture, hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
          f"{config.num_attention_heads} heads, MLP {config.intermediate_size}, vocabulary {config.vocab_size}: "
          f"{counts['total']:,} parameters ({built:,} when built on the meta device), "
          f"{counts['matmul']:,} in matrix multiplies")
    print(f"data: {len(lengths):,} synthetic examples, {mean_length:.1f} tokens each on average "
          f"({sum(n for _, n in lengths) / 1e6:.2f}M per epoch; Alpaca's: {ALPACA_TOKENS_PER_EPOCH / 1e6:.1f}M), "
          f"longest {max(n for _, n in lengths)}")
    print(f"model FLOPs per real token: {per_token / 1e9:.4g} GFLOP (6N + attention at this data's lengths); "
          f"LLaMA-7B: {seven['total'] / 1e9:.3f}B parameters, recipe total {recipe_flops(lengths):.3g} FLOPs "
          f"over {RECIPE_EPOCHS} epochs")
    precision = "fp32 on the CPU (--smoke)" if args.smoke else "bf16 mixed precision"
    print(f"recipe: {precision}, AdamW, per-device batch {args.per_device_train_batch_size} x "
          f"{args.gradient_accumulation_steps} accumulation steps; padding_free attention: {attention[0]} "
          f"({attention[1]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds_per_mode", type=float, default=120, help="training time per mode, warm-up included")
    parser.add_argument("--max_total_seconds", type=float, default=400,
                        help="budget for all modes; a mode gets less than --seconds_per_mode when it runs short")
    parser.add_argument("--warmup_steps", type=int, default=3, help="optimizer steps left out of the measurement")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4, help="the recipe's 4")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=8, help="the recipe's 8 (on 4 GPUs)")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="peak bf16 TFLOP/s of the GPU (default: looked up in throughput.PEAK_BF16_TFLOPS)")
    parser.add_argument("--dry_run", action="store_true", help="print the plan and the arithmetic, train nothing")
    parser.add_argument("--smoke", action="store_true",
                        help="run everything on a tiny model on the CPU for a few seconds per mode (a test of the "
                             "script, not a measurement)")
    args = parser.parse_args()
    if not (args.smoke or args.dry_run) and not torch.cuda.is_available():
        print(f"error: bench_gpu.py needs a CUDA GPU and torch {torch.__version__} sees none here; run it on a GPU "
              f"machine, or pass --dry_run or --smoke to check the script on a CPU.", file=sys.stderr)
        sys.exit(1)
    if not (args.smoke or args.dry_run) and torch.cuda.get_device_capability()[0] < 8:
        print(f"error: the recipe trains in bf16, which {torch.cuda.get_device_name()} lacks (it needs an Ampere or "
              f"newer GPU: A100, A10G, L4, H100, RTX 30xx/40xx).", file=sys.stderr)
        sys.exit(1)
    if args.smoke:  # unless given: short, and a step per micro-batch, so that a slow CPU still measures a few steps
        for name, value in (("seconds_per_mode", 6), ("warmup_steps", 1), ("gradient_accumulation_steps", 1)):
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    config = bench_config(args.smoke)
    lengths = alpaca_like_lengths(2000 if args.smoke else ALPACA_EXAMPLES, max_length=128 if args.smoke else 512)
    device = "cpu" if args.smoke else "cuda"
    attention = varlen_attention(device)

    hardware = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else "CPU"
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {hardware}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), transformers {transformers.__version__}")
    print_plan(config, lengths, args, attention)
    if args.dry_run:
        peak = args.peak_tflops or (throughput.peak_tflops_for_device("cuda") if torch.cuda.is_available() else None)
        print(f"modes: {', '.join(MODES)}, {args.seconds_per_mode:.0f} s each within {args.max_total_seconds:.0f} s; "
              f"peak: {f'{peak:g} TFLOP/s' if peak else 'unknown here'}. Dry run: nothing trained.")
        return

    dataset = SyntheticAlpaca(lengths, config.vocab_size)
    deadline = time.perf_counter() + args.max_total_seconds
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, mode in enumerate(MODES):
            seconds = min(args.seconds_per_mode, (deadline - time.perf_counter()) / (len(MODES) - index))
            if mode != "padding_free" or attention[0] == "sdpa":
                results[mode] = run_mode(mode, config, dataset, args, seconds, attention[0], tmp)
                continue
            try:  # a compiled kernel (flex_attention needs triton and a C compiler) may fail on a bare machine
                results[mode] = run_mode(mode, config, dataset, args, seconds, attention[0], tmp)
            except Exception:
                traceback.print_exc()
                print(f"padding_free with {attention[0]} failed (traceback above); measuring it with sdpa instead",
                      file=sys.stderr)
                attention = ("sdpa", f"{attention[0]} failed on this machine; dense block mask")
                gc.collect()
                results[mode] = run_mode(mode, config, dataset, args, deadline - time.perf_counter(), "sdpa", tmp)

    peak = args.peak_tflops or throughput.peak_tflops_for_device(device)
    print(f"\nper mode (steady state after {args.warmup_steps} optimizer steps; peak "
          f"{f'{peak:g} TFLOP/s' if peak else 'unknown, so no MFU: pass --peak_tflops'}):")
    print(f"    {'mode':34s} {'real tok/s':>11s} {'processed':>11s} {'real share':>10s} {'MFU':>6s} {'peak mem':>9s}")
    for mode, result in results.items():
        label = f"{mode} ({attention[0]})" if mode == "padding_free" else f"{mode} (sdpa)"
        mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
        memory = "n/a" if math.isnan(result["memory_gib"]) else f"{result['memory_gib']:.1f} GiB"
        print(f"    {label:34s} {result['real_tps']:11,.0f} {result['processed_tps']:11,.0f} {result['share']:10.3f} "
              f"{mfu:>6s} {memory:>9s}  ({result['steps']} steps in {result['seconds']:.0f} s)")

    total_flops = recipe_flops(lengths)
    print(f"\nprojected wall time of the 3-epoch Alpaca-7B recipe ({total_flops:.3g} model FLOPs), at each mode's MFU "
          f"(2023: about 3 h on 8 A100s):")
    for mode, result in results.items():
        if result["mfu"] is None:
            print(f"    {mode:34s} n/a (no MFU measured)")
            continue
        hours = [total_flops / (gpus * peak * 1e12 * result["mfu"]) / 3600 for gpus in (4, 8)]
        print(f"    {mode:34s} 4 GPUs: {hours[0]:6.2f} h   8 GPUs: {hours[1]:6.2f} h")


if __name__ == "__main__":
    main()
