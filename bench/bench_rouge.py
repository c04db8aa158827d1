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

from alpaca.generate.rouge_l import RougeLIndex, most_similar, tokenize, tokenizer_for

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


# Frequent Chinese characters first (function words and instruction verbs), then the rest drawn from the CJK block.
COMMON_CHINESE = (
    "的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里"
    "用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实"
    "日军者意无力它与长把机十民第公此已工使情明性知全三又关点正业外将两高间由问很最重并物手应战向头文体政"
    "美相见被利什二等产或新己制身果加西斯月话合回特代内信表化老给世位次度门任常先海通教儿原东声提立及比员"
    "解水名真论处走义各入几口认条平系气题活尔更别打女变四神总何电数安少报才结反受目太量再感建务做接必场件"
    "计管期市直德资命山金指克许统区保至队形社便空决治展马科司五基眼书非则听白却界达光放强即像难且权思王象"
    "完设式色路记南品住告类求据程北边死张该交规万取拉格望觉术领共确传师观清今切院让识候带导争运笑飞风步改"
    "收根干造言联持组每济车亲极林服快办议往元英士证近失转夫令准布始怎呢存未远叫台单影具罗字爱击流备兵连调"
    "深商算质团集百需价花党华城石级整府离况亚请技际约示复病息究线似官火断精满支视消越器容照须九增研写称企"
    "八功吗包片史委乎查轻易早曾除农找装广显吧阿李标谈吃图念六引历首医局突专费号尽另周较注语仅考落青随选列"
    "武红响虽推势参希古众构房半节土投某案黑维革划敌致陈律足态护七兴派孩验责营星够章音跟志底站严巴例防族供"
    "效续施留讲型料终答紧黄绝奇察母京段依批群项故按河米围江织害斗双境客纪采举杀攻父苏密低朝友诉止细愿千值"
    "仍男钱破网热助倒育属坐帝限船脸职速刻乐否刚威毛状率甚独球般普怕弹校苦创假久错承印晚兰试股拿脑预谁益阳"
    "若哪微尼继送急血惊伤素药适波夜省初喜卫源食险待述陆习置居劳财环排福纳欢雷警获模充负云停木游龙树疑层冷"
    "洲冲射略范竟句室异激汉村哈策演简卡罪判担州静退既衣您宗积余痛检差富灵协角占配征修皮挥胜降阶审沉坚善妈"
    "刘读啊超免压银买皇养伊怀执副乱抗犯追帮宣佛岁航优怪香著田铁控税左右份穿艺背阵草脚概恶块顿敢守酒岛托央"
    "户烈洋哥索胡款靠评版宝座释景顾弟登货互付伯慢欧换闻危忙核暗姐介坏讨丽良序升监临亮露永呼味野架域沙掉括"
    "舰鱼杂误湖钟奔顶爸恩妻迹雨粮仪"
)


def make_chinese_pool(pool_size: int, vocab_size: int, seed: int) -> list[str]:
    """pool_size instruction-like Chinese strings of 8-60 characters, Zipf-distributed over vocab_size characters,
    with some full-width punctuation (which no tokenizer counts)."""
    rng = np.random.default_rng(seed)
    rare = [chr(c) for c in rng.choice(np.arange(0x4E00, 0x9FA6), size=vocab_size, replace=False)]
    vocabulary = list(dict.fromkeys(list(COMMON_CHINESE) + rare))[:vocab_size]
    frequency = 1.0 / np.arange(1, len(vocabulary) + 1) ** 1.1
    frequency /= frequency.sum()
    lengths = rng.integers(8, 61, size=pool_size)
    char_ids = rng.choice(len(vocabulary), size=int(lengths.sum()), p=frequency)
    endings = rng.choice(["。", "？", "：", "", "！"], size=pool_size)
    pool, start = [], 0
    for length, ending in zip(lengths, endings, strict=True):
        chars = [vocabulary[i] for i in char_ids[start : start + length]]
        start += length
        if length > 12 and rng.random() < 0.4:
            chars[length // 2] += "，"
        pool.append("".join(chars) + ending)
    return pool


def character_tokenize(text: str) -> list[str]:
    """A character-level tokenizer for rouge_score (what Chinese ROUGE-L implementations use): every letter or digit
    is a token; punctuation and spaces are not. On these Han-only strings it gives the units our index scores."""
    return [ch for ch in text.lower() if ch.isalnum()]


def bench_chinese(args: argparse.Namespace, english_ms: float, english_tokens: float) -> int:
    """The same measurement on a Chinese pool, with language="zh", against rouge_score's LCS over characters; prints
    the per-call time next to the English one (the kernel's work grows with the pool's tokens, so also per token).
    Returns the number of scores that differ."""
    texts = make_chinese_pool(args.pool_size + args.num_candidates, args.vocab_size, args.seed)
    pool, candidates = texts[: args.pool_size], texts[args.pool_size :]
    index = RougeLIndex(pool, num_threads=args.num_threads, language="zh")
    chinese_tokenize = tokenizer_for("zh")
    mean_tokens = statistics.mean(len(chinese_tokenize(text)) for text in pool)
    index.scores(candidates[0])
    call_ms = []
    for candidate in candidates:
        start = time.perf_counter()
        index.scores(candidate)
        call_ms.append(1e3 * (time.perf_counter() - start))
    chinese_ms = statistics.median(call_ms)
    sample_tokens = [character_tokenize(text) for text in pool[: args.rouge_sample]]
    per_entry_s, mismatches = [], 0
    for candidate in candidates[: args.rouge_candidates]:
        candidate_tokens = character_tokenize(candidate)
        start = time.perf_counter()
        reference = [rouge_scorer._score_lcs(candidate_tokens, tokens).fmeasure for tokens in sample_tokens]
        per_entry_s.append((time.perf_counter() - start) / len(sample_tokens))
        mismatches += int(np.sum(index.scores(candidate)[: len(sample_tokens)] != np.array(reference)))
    rouge_ms = 1e3 * statistics.median(per_entry_s) * len(pool)
    print(f"Chinese pool: {len(pool):,} instructions, {mean_tokens:.1f} characters on average; RougeLIndex("
          f"language='zh'): median {chinese_ms:.2f} ms per call (English above: {english_ms:.2f} ms, ratio "
          f"{chinese_ms / english_ms:.2f}, per pool token "
          f"{(chinese_ms / mean_tokens) / (english_ms / english_tokens):.2f}); rouge_score over characters: "
          f"{rouge_ms:,.0f} ms per candidate "
          f"(scaled from {len(sample_tokens):,} entries); scores equal on {len(sample_tokens) * len(per_entry_s):,} "
          f"pairs: {'yes' if mismatches == 0 else f'NO, {mismatches} differ'}")
    return mismatches


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
    chinese_mismatches = bench_chinese(args, index_ms, mean_tokens)
    if mismatches or fallback_mismatches or chinese_mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
