"""Translate the 2023 Alpaca README's `train.py` flags into what transformers 5 accepts.

Users paste the original command; transformers 5 renamed or dropped several of its flags. `translate_legacy_flags`
rewrites argv before `HfArgumentParser` sees it and returns one notice per translation, so nothing is silently
substituted:

    --evaluation_strategy X                  -> --eval_strategy X
    --warmup_ratio R                         -> --warmup_steps R   (a float below 1 is a ratio in transformers 5)
    --group_by_length True                   -> --train_sampling_strategy group_by_length
    --no_cuda True                           -> --use_cpu True
    --fsdp "full_shard auto_wrap"            -> --fsdp --fsdp_config '{"reshard_after_forward": true, ...}'
    --fsdp_transformer_layer_cls_to_wrap C   -> "transformer_layer_cls_to_wrap": ["C"] in --fsdp_config
    --tf32 True (no GPU that supports it)    -> dropped (transformers 5 raises instead)
    no GPU at all and no --use_cpu           -> --use_cpu True (else --bf16 raises, and torchrun starts unrelated
                                                processes instead of data-parallel ones)
"""

import json
import os

from alpaca.cli import parse_bool
from alpaca.errors import DataError, MissingPathError, UsageError

# `--fsdp` words that map onto fsdp_config keys for FSDP2 (transformers 5's default); others pass through untouched.
_FSDP_WORDS = {"full_shard": ("reshard_after_forward", True), "shard_grad_op": ("reshard_after_forward", False),
               "offload": ("cpu_offload", True), "auto_wrap": (None, None)}


def _split(argv: list[str]) -> list[tuple[str, str | None]]:
    """argv as (flag, value) pairs; value is None for a bare flag. `--flag=value` and `--flag value` both work."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            flag, value = arg.split("=", 1)
            pairs.append((flag, value))
            i += 1
        elif arg.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            pairs.append((arg, argv[i + 1]))
            i += 2
        else:
            pairs.append((arg, None))
            i += 1
    return pairs


def _is_true(flag: str, value: str | None) -> bool:
    """A bare flag is True; otherwise the value as cli.parse_bool reads it (`false`, `False`, `0` are False)."""
    return value is None or parse_bool(value, flag)


def _as_bool(value: str) -> bool | None:
    try:
        return parse_bool(value)
    except UsageError:
        return None


def _is_ratio(value: str | None) -> bool:
    try:
        return value is not None and 0 <= float(value) < 1
    except ValueError:
        return False


def _gpu_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(
        hasattr(torch, "xpu") and torch.xpu.is_available())


def _tf32_available() -> bool:
    from transformers.utils import is_torch_tf32_available

    return is_torch_tf32_available()


def _load_fsdp_config(value: str | None) -> dict:
    if value is None:
        return {}
    inline = value.lstrip().startswith("{")
    if not inline and not os.path.isfile(value):
        raise MissingPathError(f"--fsdp_config {value}: no such file; pass e.g. configs/fsdp_llama.json.")
    try:
        if inline:
            return json.loads(value)
        with open(value, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:  # typed on the command line: a usage mistake
        raise (UsageError if inline else DataError)(f"--fsdp_config {value}: not valid JSON ({error}).") from None


def translate_legacy_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv transformers 5 accepts, one notice per flag that was translated or dropped)."""
    out: list[tuple[str, str | None]] = []
    notices: list[str] = []
    fsdp_updates: dict = {}
    fsdp_requested = False
    for flag, value in _split(argv):
        if flag == "--evaluation_strategy":
            out.append(("--eval_strategy", value))
            notices.append(f"--evaluation_strategy {value} -> --eval_strategy {value} (renamed in transformers 5)")
        elif flag == "--warmup_ratio":
            if not _is_ratio(value):
                raise UsageError(f"--warmup_ratio must be a number in [0, 1), got {value!r}.")
            out.append(("--warmup_steps", value))
            notices.append(f"--warmup_ratio {value} -> --warmup_steps {value} (a float below 1 is a ratio in "
                           "transformers 5)")
        elif flag == "--group_by_length":
            if _is_true(flag, value):
                out.append(("--train_sampling_strategy", "group_by_length"))
            notices.append(f"--group_by_length {value or 'True'} -> "
                           + ("--train_sampling_strategy group_by_length" if _is_true(flag, value) else "dropped")
                           + " (renamed in transformers 5)")
        elif flag == "--no_cuda":
            if _is_true(flag, value):
                out.append(("--use_cpu", "True"))
            notices.append(f"--no_cuda {value or 'True'} -> " + ("--use_cpu True" if _is_true(flag, value)
                                                                  else "dropped") + " (renamed in transformers 5)")
        elif flag == "--tf32" and _is_true(flag, value) and not _tf32_available():
            notices.append("--tf32 True dropped: this machine has no GPU that supports TF32 (transformers 5 raises)")
        elif flag == "--fsdp_transformer_layer_cls_to_wrap":
            fsdp_updates["transformer_layer_cls_to_wrap"] = [c.strip() for c in (value or "").split(",") if c.strip()]
            notices.append(f"--fsdp_transformer_layer_cls_to_wrap {value} -> fsdp_config"
                           f"[\"transformer_layer_cls_to_wrap\"] = {fsdp_updates['transformer_layer_cls_to_wrap']}")
        elif flag == "--fsdp" and value is not None:
            words = value.split()
            switch = _as_bool(value)  # `--fsdp True` / `--fsdp false`, or None for words like "full_shard auto_wrap"
            if switch is False or not words:
                notices.append(f"--fsdp {value} dropped (FSDP off)")
                continue
            fsdp_requested = True
            if switch:
                continue
            unknown = [w for w in words if w not in _FSDP_WORDS]
            if unknown:  # hybrid_shard, no_shard, ...: FSDP1-only words, transformers explains them itself
                out.append((flag, value))
                fsdp_requested = False
                continue
            for word in words:
                key, setting = _FSDP_WORDS[word]
                if key is not None:
                    fsdp_updates.setdefault(key, setting)
            notices.append(f"--fsdp \"{value}\" -> --fsdp with fsdp_config "
                           + json.dumps({k: v for k, v in fsdp_updates.items() if k != "transformer_layer_cls_to_wrap"})
                           + " (string values are deprecated in transformers 5)")
        elif flag == "--fsdp":
            fsdp_requested = True
        else:
            out.append((flag, value))
    if fsdp_requested:
        out.append(("--fsdp", None))
    if fsdp_updates:
        given = [value for flag, value in out if flag == "--fsdp_config"]
        config = _load_fsdp_config(given[-1] if given else None)
        config.update(fsdp_updates)
        out = [(flag, value) for flag, value in out if flag != "--fsdp_config"]
        out.append(("--fsdp_config", json.dumps(config)))
    flags = {flag for flag, _ in out}
    if "--use_cpu" not in flags and not _gpu_available():  # DeepSpeed too runs on the CPU with it (CPU Adam)
        out.append(("--use_cpu", "True"))
        notices.append("no GPU found: added --use_cpu True (training runs on the CPU; under torchrun, over gloo)")
    return [s for flag, value in out for s in ((flag,) if value is None else (flag, value))], notices
