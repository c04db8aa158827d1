"""RougeLIndex vs rouge_score: ROUGE-L F1 of one candidate against a 52K pool, measured side by side in one run.

    python bench/bench_rouge.py                      # 52,000 pool entries, all cores
    python bench/bench_rouge.py --pool_size 52000 --num_threads 1 --num_candidates 50 --rouge_sample 2000

The pool is synthetic but instruction-like (seeded): 5-40 words drawn with Zipf-like frequencies from a vocabulary of
~3,000 words, with some punctuation and capitals. rouge_score is timed the way the original generator used it (pool
tokenized once, then `rouge_scorer._score_lcs(candidate_tokens, entry_tokens)` per entry, one process) on the first
`--rouge_sample` entries and scaled linearly to the whole pool; its scores on that sample are compared with `==`.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np
from rouge_score import rouge_scorer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere
from alpaca.generate.rouge_l import RougeLIndex, most_similar, tokenize

COMMON_WORDS = (
    "the a an of to and in for with on is that this it as be by your from or are can what how which give write "
    "list describe explain create generate find make suggest classify identify rewrite summarize translate edit "
    "tell me following sentence text word words paragraph story poem email letter article question answer example "
    "examples three five ten ways tips reasons steps best good new different people person company product"
).split()


def make_pool(pool_size: int, vocab_size: int, seed: int) -> list[str]:
    """pool_size instruction-like strings of 5-40 words; common words first, then Zipf-distributed pseudo-words."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocabulary = list(dict.fromkeys(COMMON_WORDS + [
        "".join(rng.choice(letters, size=rng.integers(3, 11))) for _ in range(vocab_size)
    ]))[:vocab_size]
    frequency = 1.0 / np.arange(1, len(vocabulary) + 1) ** 1.1
    frequency /= frequency.sum()
    lengths = rng.integers(5, 41, size=pool_size)
    word_ids = rng.choice(len(vocabulary), size=int(lengths.sum()), p=frequency)
    endings = rng.choice([".", "?", ":", "", "!"], size=pool_size)
    pool, start = [], 0
    for length, ending in zip(lengths, endings, strict=True):
        words = [vocabulary[i] for i in word_ids[start : start + length]]
        start += length
        words[0] = words[0].capitalize()
        if length > 8 and rng.random() < 0.3:
            words[length // 2] += ","
        pool.append(" ".join(words) + ending)
    return pool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool_size", type=int, default=52_000, help="instructions in the pool")
    parser.add_argument("--vocab_size", type=int, default=3_000, help="distinct words the pool is drawn from")
    parser.add_argument("--num_candidates", type=int, default=50, help="candidates timed with RougeLIndex.scores")
    parser.add_argument("--rouge_sample", type=int, default=2_000, help="pool entries rouge_score is timed on")
    parser.add_argument("--rouge_candidates", type=int, default=3, help="candidates timed with rouge_score")
    parser.add_argument("--num_threads", type=int, default=None, help="RougeLIndex threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pool")
    args = parser.parse_args()

    texts = make_pool(args.pool_size + args.num_candidates, args.vocab_size, args.seed)
    pool, candidates = texts[: args.pool_size], texts[args.pool_size :]
    start = time.perf_counter()
    index = RougeLIndex(pool, num_threads=args.num_threads)
    build_s = time.perf_counter() - start
    mean_tokens = statistics.mean(len(tokenize(text)) for text in pool)
    print(f"pool: {len(pool):,} instructions, {mean_tokens:.1f} tokens on average; {len(candidates)} candidates; "
          f"RougeLIndex threads: {index.num_threads} ({os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}, "
          "other processes slow both sides)")
    start = time.perf_counter()
    index.scores(candidates[0])  # compiles the kernel, or loads it from numba's on-disk cache
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    incremental = RougeLIndex(num_threads=args.num_threads)
    for text in pool:
        incremental.add(text)
    add_s = time.perf_counter() - start
    print(f"index build: add_many {build_s:.2f} s, {len(pool):,} x add {add_s:.2f} s; "
          f"first scores call (compile or cache load) {warmup_s:.2f} s; backend {index.backend}")

    call_ms, step_ms = [], []
    for candidate in candidates:
        start = time.perf_counter()
        scores = index.scores(candidate)
        call_ms.append(1e3 * (time.perf_counter() - start))
        most_similar(scores, pool, k=10)
        float(np.mean(scores))
        step_ms.append(1e3 * (time.perf_counter() - start))
    index_ms = statistics.median(call_ms)
    print(f"RougeLIndex.scores: median {index_ms:.2f} ms per call (min {min(call_ms):.2f}, max {max(call_ms):.2f}) "
          f"over {len(candidates)} candidates; with top-10 (full argsort) and mean: median "
          f"{statistics.median(step_ms):.2f} ms")

    fallback = RougeLIndex(pool, num_threads=args.num_threads, backend="rapidfuzz")
    fallback_ms, fallback_mismatches = [], 0
    for candidate in candidates[:10]:
        start = time.perf_counter()
        fallback_scores = fallback.scores(candidate)
        fallback_ms.append(1e3 * (time.perf_counter() - start))
        fallback_mismatches += int(np.sum(fallback_scores != index.scores(candidate)))
    print(f"fallback backend (rapidfuzz, used without numba): median {statistics.median(fallback_ms):.2f} ms per call "
          f"over {len(fallback_ms)} candidates; equal to numba's on all {len(pool) * len(fallback_ms):,} pairs: "
          f"{'yes' if fallback_mismatches == 0 else f'NO, {fallback_mismatches} differ'}")

    sample = pool[: args.rouge_sample]
    sample_tokens = [tokenize(text) for text in sample]  # the original tokenized the pool once, too
    per_entry_s, mismatches = [], 0
    for candidate in candidates[: args.rouge_candidates]:
        candidate_tokens = tokenize(candidate)
        start = time.perf_counter()
        reference = [rouge_scorer._score_lcs(candidate_tokens, tokens).fmeasure for tokens in sample_tokens]
        per_entry_s.append((time.perf_counter() - start) / len(sample))
        mismatches += int(np.sum(index.scores(candidate)[: len(sample)] != np.array(reference)))
    rouge_ms = 1e3 * statistics.median(per_entry_s) * len(pool)
    print(f"rouge_score (_score_lcs, one process): {rouge_ms:,.0f} ms per candidate, measured on {len(sample):,} "
          f"entries x {len(per_entry_s)} candidates and scaled linearly to {len(pool):,}")
    print(f"speed-up: {rouge_ms / index_ms:,.0f}x; scores equal to rouge_score on "
          f"{len(sample) * len(per_entry_s):,} pairs: {'yes' if mismatches == 0 else f'NO, {mismatches} differ'}")
    if mismatches or fallback_mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
