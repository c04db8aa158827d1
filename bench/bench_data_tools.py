"""`data_tools.py clean` on 52K synthetic records vs the same exact ROUGE-L dedup with rouge_score, in one run.

    python bench/bench_data_tools.py                       # 52,000 records, all cores
    python bench/bench_data_tools.py --num_records 52000 --num_cpus 2 --rouge_candidates 20 --rouge_sample 2000

The records are built from the seed tasks (seed_tasks.jsonl): each instruction is a seed instruction with about
half of its words replaced by words drawn (Zipf-like) from the seeds' vocabulary, so most are new but some land
within ROUGE-L 0.7 of an earlier one; about 3% are exact copies of an earlier record and 5% an earlier one with
one word changed (near-duplicates), and a few carry the defects the filters look for. `clean` runs in full (the
generator's filters, --clean filters, exact and near-duplicates against every earlier kept instruction) and is
timed end to end, file read to files written (wall time, and CPU time summed over its threads, which a busy
machine inflates less). rouge_score is timed the way the original generator used it (pool
tokenized once, `rouge_scorer._score_lcs` per pair, one process) on `--rouge_candidates` candidates against
`--rouge_sample` pool entries; that cost per pair times the pairs our run scored is its estimate. Its scores on
the sample are compared with ours with `==`.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from rouge_score import rouge_scorer

from alpaca.data import tools as data_tools
from alpaca.generate.rouge_l import RougeLIndex

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFECT_OUTPUTS = ["N/A", "", "1. Instruction: Say hi.\n1. Output: hi"]


def make_records(num_records: int, seed: int) -> list[dict]:
    """num_records Alpaca records derived from the seed tasks (see the module docstring)."""
    rng = np.random.default_rng(seed)
    seeds = [json.loads(line) for line in open(os.path.join(REPO, "seed_tasks.jsonl"), encoding="utf-8")]
    templates = [s["instruction"].split() for s in seeds]
    words = [w for t in templates for w in t] + [w for s in seeds for w in s["instances"][0]["output"].split()]
    vocabulary, counts = np.unique([w.strip(".,:;!?\"'()").lower() for w in words if w.isascii()], return_counts=True)
    keep = np.array([bool(w) and w.isalpha() for w in vocabulary])
    vocabulary, counts = vocabulary[keep], counts[keep]
    probability = counts / counts.sum()
    draws = iter(vocabulary[rng.choice(len(vocabulary), size=80 * num_records, p=probability)].tolist())
    records = []
    for i in range(num_records):
        roll = rng.random()
        if i > 100 and roll < 0.03:
            records.append(dict(records[rng.integers(i)]))  # an exact copy
            continue
        if i > 100 and roll < 0.08:
            earlier = records[rng.integers(i)]["instruction"].split()
            earlier[rng.integers(len(earlier))] = next(draws)
            instruction = " ".join(earlier)
        else:
            template = list(templates[rng.integers(len(templates))])
            for position in range(1, len(template)):
                if rng.random() < 0.5:
                    template[position] = next(draws)
            instruction = " ".join(template).rstrip(".") + "."
        task_input = " ".join(next(draws) for _ in range(rng.integers(3, 30))) if roll > 0.6 else ""
        output = " ".join(next(draws) for _ in range(rng.integers(1, 40))).capitalize() + "."
        if rng.random() < 0.01:
            output = DEFECT_OUTPUTS[rng.integers(len(DEFECT_OUTPUTS))]
        records.append({"instruction": instruction, "input": task_input, "output": output})
    return records


def scored_pairs(num_records: int, dropped_path: str) -> int:
    """Pairs the near-duplicate check scored: every record that reached it against the kept records before it."""
    reasons = {}
    with open(dropped_path, encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            reasons[entry["record_index"]] = entry["drop_reason"]
    pairs = pool = 0
    for i in range(num_records):
        reason = reasons.get(i)
        if reason is None or reason == "similarity":
            pairs += pool
        pool += reason is None
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_records", type=int, default=52_000, help="synthetic records to clean")
    parser.add_argument("--num_cpus", type=int, default=None, help="ROUGE-L threads for clean (default: all cores)")
    parser.add_argument("--rouge_candidates", type=int, default=20, help="candidates timed with rouge_score")
    parser.add_argument("--rouge_sample", type=int, default=2_000, help="kept instructions each is scored against")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic records")
    args = parser.parse_args()

    records = make_records(args.num_records, args.seed)
    with tempfile.TemporaryDirectory() as directory:
        data_path = os.path.join(directory, "data.json")
        with open(data_path, "w", encoding="utf-8") as f:
            json.dump(records, f)
        RougeLIndex(["warm up the kernel"]).scores("load the compiled kernel")  # numba's compile or cache load
        print(f"{len(records):,} synthetic records; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
              "(other processes slow both sides)")
        output = os.path.join(directory, "clean.json")
        start, cpu_start = time.perf_counter(), time.process_time()
        result = data_tools.clean(data_path, output=output, num_cpus=args.num_cpus)
        ours_s, ours_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        pairs = scored_pairs(len(records), output + ".dropped.jsonl")
        kept = [r["instruction"] for r in json.load(open(output, encoding="utf-8"))]

    print(f"ours: clean in {ours_s:.1f} s wall, {ours_cpu_s:.1f} s CPU time over all its threads "
          f"({result['kept']:,} kept; dropped {result['dropped']}); the "
          f"near-duplicate check scored {pairs:,} pairs ({1e9 * ours_s / max(pairs, 1):.1f} ns per pair, "
          "everything included)")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    sample = kept[: args.rouge_sample]
    sample_tokens = [scorer._tokenizer.tokenize(text) for text in sample]  # the original tokenized the pool once
    index = RougeLIndex(sample, num_threads=1)
    per_pair_s, per_pair_cpu_s, mismatches = [], [], 0
    for candidate in kept[-args.rouge_candidates:]:
        start, cpu_start = time.perf_counter(), time.process_time()
        candidate_tokens = scorer._tokenizer.tokenize(candidate)
        reference = [rouge_scorer._score_lcs(candidate_tokens, tokens).fmeasure for tokens in sample_tokens]
        per_pair_s.append((time.perf_counter() - start) / len(sample))
        per_pair_cpu_s.append((time.process_time() - cpu_start) / len(sample))
        mismatches += int(np.sum(index.scores(candidate) != np.array(reference)))
    rouge_s = statistics.median(per_pair_s) * pairs
    rouge_cpu_s = statistics.median(per_pair_cpu_s) * pairs
    print(f"rouge_score: {1e6 * statistics.median(per_pair_s):.1f} us per pair wall, "
          f"{1e6 * statistics.median(per_pair_cpu_s):.1f} us CPU (medians over {len(per_pair_s)} candidates x "
          f"{len(sample):,} kept instructions, one process) x {pairs:,} pairs = {rouge_s:,.0f} s wall "
          f"({rouge_s / 3600:.1f} h), {rouge_cpu_s:,.0f} s CPU for the same dedup")
    print(f"side by side: wall ours {ours_s:.1f} s vs rouge_score {rouge_s:,.0f} s: {rouge_s / ours_s:,.0f}x; CPU time "
          f"ours {ours_cpu_s:.1f} s vs {rouge_cpu_s:,.0f} s: {rouge_cpu_s / ours_cpu_s:,.0f}x; scores equal on "
          f"{len(sample) * len(per_pair_s):,} pairs: {'yes' if mismatches == 0 else f'NO, {mismatches} differ'}")
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
