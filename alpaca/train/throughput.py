"""Training throughput a user can trust: tokens per second, the real-token share and MFU, counted exactly.

`train.py` registers `ThroughputCallback`, which adds to every training log line and to the final metrics:

    real_tokens_per_second       non-pad tokens trained per second, summed over all data-parallel processes
    processed_tokens_per_second  tokens the model computed on (padding included), summed over all processes
    real_token_share             real / processed tokens
    mfu                          model FLOP utilisation: model FLOPs of the real tokens per second, divided by
                                 (processes x peak FLOP/s of one device); only when the peak is known

Model FLOPs (PaLM's convention, appendix B of Chowdhery et al. 2022, also nanoGPT's), per sequence of s real tokens:

    flops = (4 * N + 2 * N_trainable) * s  +  12 * n_layers * d_attn * s**2

N counts the parameters that take part in a matrix multiply: every parameter except the input embedding table
(a lookup), unless that table is tied to the output layer. Forward is 2N per token, backward 4N when every weight
trains (so 6N); a frozen weight (LoRA's base) skips its weight gradient, 2N less. The attention term counts the
full s x s score matrix (QK^T and AV, forward and backward, d_attn = heads x head_dim); a causal kernel that skips
the masked half does about half of it, which this convention ignores, as PaLM's does. Padding is not useful work:
MFU counts the real tokens only, so random, length-grouped and padding-free batches compare fairly.
"""

import logging
import time

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity), from the vendors' datasheets. Matched as a lower-case
# substring of torch.cuda.get_device_name(), longest name first, so "h100 pcie" wins over "h100".
PEAK_BF16_TFLOPS = {
    "a100": 312.0,
    "h100 pcie": 756.0,
    "h100 nvl": 835.0,
    "h100": 989.0,   # SXM, e.g. "NVIDIA H100 80GB HBM3"
    "h200": 989.0,
    "h800": 989.0,
    "gh200": 989.0,
    "b200": 2250.0,
    "l40s": 362.0,
    "l40": 181.0,
    "l4": 121.0,
    "a10": 125.0,    # also AWS's A10G (the A10's datasheet figure; pass --peak_tflops if yours clocks lower)
    "a6000": 155.0,  # RTX A6000 (Ampere)
    "rtx 4090": 165.2,  # with fp32 accumulate, which training uses
    "rtx 3090": 71.0,
    "mi300x": 1307.0,
}


def peak_tflops_for_device(device: torch.device | str) -> float | None:
    """The bf16 dense peak (TFLOP/s) of a CUDA device from PEAK_BF16_TFLOPS, or None (CPU, unknown GPU)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def matmul_parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(N, N_trainable): parameters that enter a matrix multiply, i.e. all but an untied input embedding table.

    Counts each tensor once (tied weights), full sizes under FSDP2 (DTensor) and DeepSpeed ZeRO-3 (ds_numel)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = set()
    if embeddings is not None and (outputs is None or outputs.weight is not embeddings.weight):
        skip.add(id(embeddings.weight))
    total = trainable = 0
    seen = set()
    for parameter in model.parameters():
        if id(parameter) in seen or id(parameter) in skip:
            continue
        seen.add(id(parameter))
        count = getattr(parameter, "ds_numel", None) or parameter.numel()
        total += count
        trainable += count if parameter.requires_grad else 0
    return total, trainable


def attention_width(config) -> tuple[int, int]:
    """(n_layers, d_attn): the model's layers and query width (heads x head_dim) for the attention term."""
    config = getattr(config, "text_config", None) or config
    layers = getattr(config, "num_hidden_layers", 0) or 0
    heads = getattr(config, "num_attention_heads", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    return layers, heads * head_dim


def model_flops(real_tokens: float, sum_squared_lengths: float, n_params: int, n_trainable: int, n_layers: int,
                d_attn: int) -> float:
    """Model FLOPs of training on sequences with `real_tokens` tokens in all and sum of squared lengths
    `sum_squared_lengths` (see the module docstring for the formula)."""
    return (4 * n_params + 2 * n_trainable) * real_tokens + 12 * n_layers * d_attn * sum_squared_lengths


def batch_token_counts(kwargs: dict) -> torch.Tensor | None:
    """[real tokens, processed tokens, sum of squared sequence lengths] of one model input, as a float64 tensor on
    the input's device (no host sync). None when there are no input_ids.

    Real tokens are those the attention mask keeps (all of them in a padding-free batch). The sum of squared lengths
    is computed as the sum over real tokens of (2 * position + 1), since 1 + 3 + ... + (2s - 1) = s**2; positions
    come from position_ids (restarting at 0 for each packed sequence) or else from the attention mask.
    """
    input_ids = kwargs.get("input_ids")
    if input_ids is None:
        return None
    mask = kwargs.get("attention_mask")
    mask = torch.ones_like(input_ids, dtype=torch.bool) if mask is None or mask.dim() != 2 else mask.bool()
    positions = kwargs.get("position_ids")
    if positions is None or positions.shape != input_ids.shape:
        positions = mask.long().cumsum(-1) - 1
    real = mask.sum()
    squares = ((2 * positions + 1) * mask).sum()
    processed = torch.tensor(input_ids.numel(), device=input_ids.device)
    return torch.stack([real, processed, squares]).to(torch.float64)


class ThroughputCallback(TrainerCallback):
    """Counts the tokens of every training forward pass (each micro-batch of gradient accumulation, each process),
    all-reduces the counts when the Trainer logs, and adds throughput and MFU to the log.

    Register with `add_throughput_callback(trainer, peak_tflops)`, which puts it before the loggers and printers
    so that they see its numbers.
    """

    def __init__(self, peak_tflops: float | None = None):
        self.peak_tflops = peak_tflops
        self.counts = None  # since the last log: float64 [real, processed, sum of squared lengths] on the device
        self.totals = torch.zeros(3, dtype=torch.float64)  # whole run, all processes, on the CPU
        self.flops_total = 0.0
        self.window_start = self.run_start = None
        self.model_shape = None  # (N, N_trainable, n_layers, d_attn)
        self.hook = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.peak_tflops is None:
            self.peak_tflops = peak_tflops_for_device(args.device)
        self.model_shape = (*matmul_parameter_counts(model), *attention_width(model.config))
        self.hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self.window_start = self.run_start = time.perf_counter()
        if state.is_world_process_zero:
            n, trainable, layers, d_attn = self.model_shape
            peak = f"peak {self.peak_tflops:g} TFLOP/s per device" if self.peak_tflops else \
                "peak FLOP/s unknown for this device, so no MFU (pass --peak_tflops to set it)"
            logger.info(f"Throughput: model FLOPs per token = {4 * n + 2 * trainable:,} + 12 x {layers} layers x "
                        f"{d_attn} x sequence length; {peak}")

    def _count(self, module, args, kwargs):
        # Evaluation forwards are not training throughput, nor are forwards without gradients (DPO's reference
        # log-probabilities, computed by the same model with its LoRA adapter switched off).
        if not module.training or not torch.is_grad_enabled():
            return
        counts = batch_token_counts(kwargs)
        if counts is not None:
            self.counts = counts if self.counts is None else self.counts + counts

    def _reduce_window(self, args) -> tuple[torch.Tensor, float]:
        """The window's counts summed over all processes (a collective: every process must call it), and its
        length in seconds."""
        counts = self.counts if self.counts is not None else torch.zeros(3, dtype=torch.float64, device=args.device)
        self.counts = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = counts.to(args.device)
            torch.distributed.all_reduce(counts)
        now = time.perf_counter()
        seconds, self.window_start = now - self.window_start, now
        return counts.cpu(), seconds

    def _metrics(self, counts: torch.Tensor, flops: float, seconds: float, world_size: int, prefix: str) -> dict:
        real, processed, _ = counts.tolist()
        metrics = {f"{prefix}real_tokens_per_second": _significant(real / seconds),
                   f"{prefix}processed_tokens_per_second": _significant(processed / seconds),
                   f"{prefix}real_token_share": _significant(real / processed) if processed else None}
        if self.peak_tflops:
            metrics[f"{prefix}mfu"] = _significant(flops / seconds / world_size / (self.peak_tflops * 1e12))
        return metrics

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.hook is None or logs is None or not ("loss" in logs or "train_runtime" in logs):
            return  # an evaluation log, or training has not started
        counts, seconds = self._reduce_window(args)
        flops = model_flops(counts[0].item(), counts[2].item(), *self.model_shape)
        self.totals += counts
        self.flops_total += flops
        if "train_runtime" in logs:  # the final metrics of trainer.train(): the whole run
            metrics = self._metrics(self.totals, self.flops_total, time.perf_counter() - self.run_start,
                                    args.world_size, prefix="train_")
            metrics["train_real_tokens"] = int(self.totals[0])
            metrics["train_processed_tokens"] = int(self.totals[1])
        elif seconds > 0 and counts[1] > 0:
            metrics = self._metrics(counts, flops, seconds, args.world_size, prefix="")
        else:
            return
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(metrics)  # the Trainer stored its copy of `logs` just before

    def on_train_end(self, args, state, control, **kwargs):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def add_throughput_callback(trainer, peak_tflops: float | None = None) -> ThroughputCallback:
    """Register a ThroughputCallback right after the Trainer's flow callback, so that the reporting integrations
    (TensorBoard, W&B, ...) and the printed log line, which come later in the list, include its numbers."""
    from transformers.trainer_callback import DefaultFlowCallback

    callback = ThroughputCallback(peak_tflops)
    callbacks = trainer.callback_handler.callbacks
    flow = [i for i, c in enumerate(callbacks) if isinstance(c, DefaultFlowCallback)]
    callbacks.insert(flow[0] + 1 if flow else 0, callback)
    return callback
