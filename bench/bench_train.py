"""train.py's preprocessing and batching against the original's, side by side on a synthetic 52K Alpaca.

    python bench/bench_train.py                       # 52,002 examples, original path timed on 3,000 and scaled
    python bench/bench_train.py --num_examples 5000 --original_sample 5000 --train_steps 20
    python bench/bench_train.py --preprocessing_only  # (1) alone

The dataset is synthetic with Alpaca-like lengths: instructions ~15 words, 40% with an input of ~25 words,
outputs log-normal from a few words to ~300 (median ~30), words drawn from seed_tasks.jsonl. The tokenizer is the
tiny SentencePiece model of alpaca/testing/tiny_model.py (no hub here), which spends more tokens per word than LLaMA's.
It prints:
  (1) preprocessing time: `train.preprocess` (two batched calls of the fast tokenizer: full texts, prompts) vs the
      original's path (each string tokenized on its own with return_tensors="pt", padding="longest", then labels
      copied and masked), timed on a sample and scaled to the whole set; their outputs are checked to be identical
      on that sample; and, side by side, the floor: the tokenizer's batched call over the full texts alone (its own
      call, and the Rust call without offsets that ours makes), with the ratio ours / floor;
  (2) the share of processed tokens that are real, not padding, over one epoch at batch size 4: the original's
      random batches vs --train_sampling_strategy group_by_length vs --padding_free;
  (3) training throughput (real tokens per second, forward + backward + AdamW step) per mode, on the tiny model and
      on a wider one (--larger_hidden_size, 4 layers), where attention weighs more.
"""

import argparse
import copy
import json
import math
import os
import pathlib
import random
import tempfile
import time

import tokenizers
import torch
from transformers import AutoModelForCausalLM, DataCollatorWithFlattening
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend
from transformers.trainer_pt_utils import LengthGroupedSampler

from alpaca.testing.tiny_model import make_tiny_model
from alpaca.train import sft as train

REPO = pathlib.Path(__file__).resolve().parent.parent


def synthetic_alpaca(n: int, seed: int = 0) -> list[dict]:
    """n Alpaca-like records with realistic word counts, words drawn from the seed tasks."""
    words = []
    for line in (REPO / "seed_tasks.jsonl").read_text().splitlines():
        task = json.loads(line)
        texts = [task["instruction"]] + [v for inst in task["instances"] for v in (inst["input"], inst["output"])]
        words += " ".join(texts).split()
    rng = random.Random(seed)

    def text(count: int) -> str:
        return " ".join(rng.choices(words, k=max(1, count)))

    records = []
    for _ in range(n):
        output_words = min(300, max(2, round(rng.lognormvariate(math.log(30), 1.0))))
        records.append({"instruction": text(round(rng.gauss(15, 5))),
                        "input": text(round(rng.gauss(25, 10))) if rng.random() < 0.4 else "",
                        "output": text(output_words)})
    return records


class SlowLlamaTokenizer(SentencePieceBackend):
    """The original's tokenizer, LlamaTokenizer(use_fast=False): the SentencePiece library driven from Python, <s>
    prepended. transformers 5 dropped the class; its SentencePiece base is still there."""

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        return [self.bos_token_id] + token_ids_0 + ([] if token_ids_1 is None else [self.bos_token_id] + token_ids_1)


def slow_tokenizer(model_dir: str, like) -> SlowLlamaTokenizer:
    """A slow tokenizer for the same SentencePiece model, with the special tokens train.py gave `like`.

    Its normalizer is set to LLaMA's (identity, whitespace kept), which is what the fast conversion assumes; the tiny
    model was trained with SentencePiece's default one, which would fold newlines into spaces.
    """
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((pathlib.Path(model_dir) / "tokenizer.model").read_bytes())
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.precompiled_charsmap = b""
    proto.normalizer_spec.remove_extra_whitespaces = False
    vocab_file = pathlib.Path(model_dir) / "slow_tokenizer.model"
    vocab_file.write_bytes(proto.SerializeToString())
    tokenizer = SlowLlamaTokenizer(vocab_file=str(vocab_file), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", legacy=True, padding_side="right",
                                   model_max_length=like.model_max_length)
    tokenizer.add_special_tokens({"pad_token": like.pad_token})
    assert tokenizer.pad_token_id == like.pad_token_id and len(tokenizer) == len(like)
    return tokenizer


def original_preprocess(sources, targets, tokenizer) -> dict:
    """The 2023 path: every string tokenized on its own into a padded tensor, then labels copied and masked."""
    def tokenize(strings):
        tokenized = [tokenizer(text, return_tensors="pt", padding="longest", max_length=tokenizer.model_max_length,
                               truncation=True) for text in strings]
        input_ids = [t.input_ids[0] for t in tokenized]
        return input_ids, [ids.ne(tokenizer.pad_token_id).sum().item() for ids in input_ids]

    input_ids, _ = tokenize([s + t for s, t in zip(sources, targets, strict=True)])
    _, source_lens = tokenize(sources)
    labels = copy.deepcopy(input_ids)
    for label, source_len in zip(labels, source_lens, strict=True):
        label[:source_len] = train.IGNORE_INDEX
    return dict(input_ids=input_ids, labels=labels)


def tokenizer_floor(texts: list[str], tokenizer) -> tuple[float, float]:
    """Seconds to tokenize `texts` once, each truncated to model_max_length: (the tokenizer's own batched call,
    the Rust tokenizer's batch call without offsets). The second is the floor: any exact preprocessing tokenizes
    every full text at least once, and nothing tokenizes faster than that call."""
    start = time.perf_counter()
    tokenizer(texts, max_length=tokenizer.model_max_length, truncation=True, return_attention_mask=False)
    own_call = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer.backend_tokenizer.encode_batch_fast(texts)  # configured (truncation) by the call above
    fast = time.perf_counter() - start
    tokenizer.backend_tokenizer.no_truncation()
    return own_call, fast


def real_token_share(order: list[int], lengths: list[int], batch_size: int) -> float:
    """Real tokens / processed tokens when each batch is padded to its longest example."""
    real = padded = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start:start + batch_size]]
        real += sum(batch)
        padded += len(batch) * max(batch)
    return real / padded


def flattened_token_share(order: list[int], dataset, batch_size: int) -> float:
    """Real tokens / processed tokens for the padding-free collator's batches (it adds no pad token)."""
    collator = DataCollatorWithFlattening()
    real = processed = 0
    for start in range(0, len(order), batch_size):
        batch = collator([dataset[i] for i in order[start:start + batch_size]])
        processed += batch["input_ids"].numel()
        real += sum(dataset.lengths[i] for i in order[start:start + batch_size])
    return real / processed


def tokens_per_second(model_dir: str, dataset, modes: dict, steps: int, batch_size: int) -> dict[str, float]:
    """Real (non-pad) tokens trained per second in each mode (name -> (order, collate)), over `steps` batches spread
    through the epoch, after 3 warm-up steps. The modes take turns step by step, so a load change on the machine
    hits them all alike."""
    runs = {}
    for name, (order, collate) in modes.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.resize_token_embeddings(len(dataset.tokenizer), mean_resizing=False)
        model.config.use_cache = False
        spacing = max(1, len(order) // batch_size // (steps + 3))  # batches spread over the epoch, not its start
        batches = [[dataset[i] for i in order[k * batch_size:(k + 1) * batch_size]]
                   for k in range(0, spacing * (steps + 3), spacing)]
        runs[name] = dict(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4), batches=batches,
                          collate=collate, seconds=0.0, tokens=0)
    for step in range(steps + 3):
        for run in runs.values():
            instances = run["batches"][step]
            start = time.perf_counter()
            run["model"](**run["collate"](instances)).loss.backward()
            run["optimizer"].step()
            run["optimizer"].zero_grad(set_to_none=True)
            if step >= 3:
                run["seconds"] += time.perf_counter() - start
                run["tokens"] += sum(len(x["input_ids"]) for x in instances)
    return {name: run["tokens"] / run["seconds"] for name, run in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_examples", type=int, default=52002, help="size of the synthetic dataset")
    parser.add_argument("--original_sample", type=int, default=3000,
                        help="examples the original path is timed on (its time is scaled to --num_examples)")
    parser.add_argument("--model_max_length", type=int, default=512, help="as train.py's default")
    parser.add_argument("--vocab_size", type=int, default=4000,
                        help="SentencePiece vocabulary of the tiny tokenizer (LLaMA's: 32000)")
    parser.add_argument("--batch_size", type=int, default=4, help="per-device batch size (the original's 4)")
    parser.add_argument("--larger_hidden_size", type=int, default=512,
                        help="width of the second, larger model timed in (3)")
    parser.add_argument("--train_steps", type=int, default=40, help="timed training steps per mode")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of ours and of the tokenizer floor, in turns; the best of each is reported")
    parser.add_argument("--preprocessing_only", action="store_true", help="stop after (1)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(make_tiny_model(tmp, vocab_size=args.vocab_size))
        model_args = train.ModelArguments(model_name_or_path=model_dir)
        training_args = train.TrainingArguments(output_dir=tmp, use_cpu=True, model_max_length=args.model_max_length)
        _, tokenizer = train.load_model_and_tokenizer(model_args, training_args)
        examples = synthetic_alpaca(args.num_examples)
        sources, targets = train.format_examples(examples, tokenizer)
        n_sample = min(args.original_sample, len(examples))
        print(f"dataset: {len(examples):,} synthetic examples, tiny SentencePiece tokenizer ({len(tokenizer)} tokens), "
              f"model_max_length {args.model_max_length}, {torch.get_num_threads()} CPU threads")

        # (1) preprocessing
        texts = [s + t for s, t in zip(sources, targets, strict=True)]
        ours_s = own_call_s = floor_s = math.inf
        for _ in range(args.repeats):  # in turns, best of each: a load change on the machine hits all three alike
            start = time.perf_counter()
            ours = train.preprocess(sources, targets, tokenizer)
            ours_s = min(ours_s, time.perf_counter() - start)
            own_call_s, floor_s = (min(a, b) for a, b in zip((own_call_s, floor_s),
                                                             tokenizer_floor(texts, tokenizer), strict=True))
        start = time.perf_counter()
        original = original_preprocess(sources[:n_sample], targets[:n_sample], slow_tokenizer(model_dir, tokenizer))
        original_sample_s = time.perf_counter() - start
        original_s = original_sample_s * len(examples) / n_sample
        start = time.perf_counter()
        original_preprocess(sources[:n_sample], targets[:n_sample], tokenizer)
        original_fast_s = (time.perf_counter() - start) * len(examples) / n_sample
        identical = all(torch.equal(a, b) for key in ("input_ids", "labels")
                        for a, b in zip(ours[key][:n_sample], original[key], strict=True))
        lengths = [len(ids) for ids in ours["input_ids"]]
        print(f"\n(1) preprocessing, {len(examples):,} examples ({sum(lengths) / len(lengths):.1f} tokens each on "
              f"average, {sum(n == args.model_max_length for n in lengths)} truncated)")
        print(f"    original one-by-one, slow tokenizer: {original_s:8.2f} s  (timed on {n_sample:,}: "
              f"{original_sample_s:.2f} s, scaled)")
        print(f"    one-by-one, fast tokenizer: {original_fast_s:8.2f} s  (same sample, scaled)")
        print(f"    ours, batched:       {ours_s:8.2f} s  (best of {args.repeats})")
        print(f"    speed-up: {original_s / ours_s:.1f}x over the original ({original_fast_s / ours_s:.1f}x over its "
              f"loop with today's fast tokenizer); identical input_ids and labels on the sample: {identical}")
        print(f"    what bounds it: the tokenizer alone, one batched call over the {len(examples):,} full texts "
              f"(tokenizers {tokenizers.__version__}, {os.environ.get('RAYON_NUM_THREADS', os.cpu_count())} threads, "
              f"best of {args.repeats}):")
        print(f"      the tokenizer's own call, tokenizer(texts) (it also asks for offsets): {own_call_s:8.2f} s")
        print(f"      encode_batch_fast (no offsets): the floor                              {floor_s:8.2f} s  "
              f"-> at most {original_s / floor_s:.1f}x over the original")
        print(f"    ours / floor: {ours_s / floor_s:.2f} (to stay within 2); ours / the tokenizer's own call: "
              f"{ours_s / own_call_s:.2f}")

        if args.preprocessing_only:
            return

        # (2) real-token share over one epoch
        dataset = train.SupervisedDataset(examples, tokenizer)
        dataset.tokenizer = tokenizer
        generator = torch.Generator().manual_seed(42)
        random_order = torch.randperm(len(dataset), generator=generator).tolist()
        grouped_order = list(LengthGroupedSampler(args.batch_size, lengths=dataset.lengths,
                                                  generator=torch.Generator().manual_seed(42)))
        shares = {"original, random batches": real_token_share(random_order, dataset.lengths, args.batch_size),
                  "group_by_length": real_token_share(grouped_order, dataset.lengths, args.batch_size),
                  "padding_free": flattened_token_share(random_order, dataset, args.batch_size)}
        print(f"\n(2) real (non-pad) share of processed tokens, one epoch at batch size {args.batch_size}")
        for name, share in shares.items():
            print(f"    {name:26s} {share:.3f}")
        pad_ratio = (1 - shares["group_by_length"]) / (1 - shares["original, random batches"])
        print(f"    group_by_length processes {pad_ratio:.2f}x the padding of random batches")

        # (3) throughput on the tiny model
        padded = train.DataCollatorForSupervisedDataset(tokenizer)
        flat = DataCollatorWithFlattening()
        modes = {"original, random batches": (random_order, padded), "group_by_length": (grouped_order, padded),
                 "padding_free (sdpa)": (random_order, flat)}
        for hidden_size, layers in ((64, 2), (args.larger_hidden_size, 4)):
            sized_dir = model_dir if hidden_size == 64 else str(make_tiny_model(
                pathlib.Path(tmp) / f"h{hidden_size}", vocab_size=args.vocab_size, hidden_size=hidden_size,
                num_hidden_layers=layers))
            print(f"\n(3) training throughput, model hidden {hidden_size}, {layers} layers, sdpa attention, "
                  f"{args.train_steps} steps each")
            speeds = tokens_per_second(sized_dir, dataset, modes, args.train_steps, args.batch_size)
            base = speeds["original, random batches"]
            for name, speed in speeds.items():
                print(f"    {name:26s} {speed:10,.0f} real tokens/s  ({speed / base:.2f}x)")


if __name__ == "__main__":
    main()
