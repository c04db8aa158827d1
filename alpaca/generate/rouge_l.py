"""Exact, fast ROUGE-L F1 of one instruction against a growing pool: the similarity filter of the Self-Instruct loop.

Alpaca drops a generated instruction when its ROUGE-L F1 against any earlier instruction is above 0.7. The original
scored every pair with `rouge_score` (6-10 s per candidate against a 52K pool). `RougeLIndex` gives the same
numbers, equal with `==`, in 1-3 ms (bench/bench_rouge.py):

    index = RougeLIndex(seed_instructions)
    scores = index.scores(new_instruction)       # float64, shape (len(index),), in insertion order
    if scores.max() <= 0.7:
        index.add(new_instruction)

How it stays exact:
- tokens are rouge_score's default tokenizer (lower-case, runs of [a-z0-9]; no stemmer), mapped to dense integer ids
  with our own dict (never `hash()`);
- the LCS length is an integer, computed with a bit-parallel algorithm (Allison-Dix / Hyyro): one bit per candidate
  token, one pass over each pool entry's tokens, `V = (V + U) | (V - U)` with `U = V & match_mask[token]`; the LCS is
  the number of zero bits left in V. Candidates longer than 64 tokens use several 64-bit words with carries;
- F1 is computed with rouge_score's own float operations in its order: p = L/len(pool entry), r = L/len(candidate),
  2*p*r/(p+r), 0 when L == 0. The algebraically equal 2L/(la+lb) differs in the last bit and flips the > 0.7
  decision on some pairs (la=7, lb=13, L=7). No fastmath anywhere.

Other languages: `RougeLIndex(instructions, language="zh")` scores the units of `tokenizer_for(language)`
(characters for Chinese, Japanese and Thai; casefolded Unicode words elsewhere) with the same kernel and the same
float operations, so the scores equal rouge_score's LCS F1 over those units (`rouge_scorer._score_lcs`).

The kernel is compiled with numba (cached on disk when a cache directory is writable) and runs over slices of the
pool in `num_threads` threads. Without numba it falls back to rapidfuzz's LCS over the same token ids (exact as
well, several times slower).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from alpaca.generate.language import units as language_units

try:
    import numba
except ImportError:  # the rapidfuzz backend below still gives exact scores
    numba = None

_TOKEN_RE = re.compile(r"[a-z0-9]+")
MIN_ENTRIES_PER_SLICE = 2048  # smaller slices cost more in thread hand-offs than they gain


def tokenize(text: str) -> list[str]:
    """rouge_score's default tokenization (no stemmer): lower-case, then every maximal run of [a-z0-9].

    rouge_score replaces each run of other characters with a space, splits on whitespace and keeps the tokens that
    match ^[a-z0-9]+$; that yields exactly these runs. Lower-casing comes first, as there (e.g. the Kelvin sign
    lower-cases to an ASCII "k").
    """
    return _TOKEN_RE.findall(text.lower())


def tokenizer_for(language: str = "en") -> Callable[[str], list[str]]:
    """The ROUGE-L tokenizer of a language (ISO 639-1): for English rouge_score's (`tokenize`, byte-identical); for
    every other language `language.units`: one token per character of a script written without spaces (Chinese,
    Japanese, Thai), casefolded Unicode words elsewhere. rouge_score's tokenizer keeps only [a-z0-9], so Chinese
    text has no token at all and every pair would score 0."""
    return tokenize if language == "en" else language_units


def most_similar(scores: np.ndarray, instructions: Sequence[str], k: int = 10) -> dict[str, float]:
    """The k highest-scoring instructions, highest first, as {instruction: F1}, ordered exactly as the original.

    Alpaca built this dict from `np.argsort(scores)[-k:][::-1]`; ties therefore come out in numpy's argsort order,
    and a text that appears twice keeps its first position with the later value. We use the same recipe.
    `scores` has shape (len(instructions),); the mean similarity the generator stores is `float(np.mean(scores))`.
    """
    if k < 1:
        raise ValueError(f"most_similar needs k >= 1, got {k}.")
    if len(scores) != len(instructions):
        raise ValueError(f"most_similar got {len(scores)} scores for {len(instructions)} instructions; "
                         "pass the scores returned by RougeLIndex.scores for the same pool.")
    return {instructions[i]: float(scores[i]) for i in np.argsort(scores)[-k:][::-1]}


# ---------------------------------------------------------------------------------------------------------------------
# numba kernels. Everything is uint64 so that additions wrap and carries can be detected; mixing in a signed int
# would make numba promote to float64.

ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def _popcount(x):
    """Number of set bits of a uint64 (SWAR; numba has no popcount builtin)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


def _rouge_f1(lcs, prediction_len, target_len):
    """rouge_score's `_score_lcs` + `scoring.fmeasure`, same operations in the same order (bit-identical)."""
    if prediction_len == 0 or target_len == 0:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _build_match_masks(candidate_ids, vocab_size, num_words):
    """match_masks[token_id, w] has bit b set when candidate token 64*w+b is token_id. Unknown tokens (-1) match
    nothing. Shape (vocab_size, num_words), uint64."""
    masks = np.zeros((vocab_size, num_words), dtype=np.uint64)
    for position in range(candidate_ids.shape[0]):
        token = candidate_ids[position]
        if token >= 0:
            masks[token, position >> 6] |= np.uint64(1) << np.uint64(position & 63)
    return masks


def _f1_one_word(pool_tokens, offsets, masks, candidate_len, out, first, last):
    """F1 of a candidate of 1..64 tokens against pool entries first..last-1, written to out[first:last].
    pool_tokens: uint32 token ids back to back; masks: (vocab_size,) uint64; out: (pool size,) float64."""
    low_bits = ALL_ONES if candidate_len == 64 else (np.uint64(1) << np.uint64(candidate_len)) - np.uint64(1)
    for entry in range(first, last):
        start = offsets[entry]
        end = offsets[entry + 1]
        v = ALL_ONES
        for j in range(start, end):
            u = v & masks[pool_tokens[j]]
            v = (v + u) | (v - u)
        out[entry] = _rouge_f1(np.int64(_popcount(~v & low_bits)), end - start, candidate_len)


def _f1_multi_word(pool_tokens, offsets, masks, candidate_len, out, first, last):
    """Same for candidates of any length: V spans masks.shape[1] words; the addition carries across words, while
    V - U needs no borrow because U is a subset of V's bits. masks: (vocab_size, num_words) uint64."""
    num_words = masks.shape[1]
    last_word_bits = candidate_len - 64 * (num_words - 1)
    last_low_bits = ALL_ONES if last_word_bits == 64 else (np.uint64(1) << np.uint64(last_word_bits)) - np.uint64(1)
    v = np.empty(num_words, dtype=np.uint64)
    for entry in range(first, last):
        start = offsets[entry]
        end = offsets[entry + 1]
        v[:] = ALL_ONES
        for j in range(start, end):
            token = pool_tokens[j]
            carry = np.uint64(0)
            for w in range(num_words):
                x = v[w]
                u = x & masks[token, w]
                s = x + u
                s_carried = s + carry
                carry = np.uint64(1) if (s < x or s_carried < s) else np.uint64(0)
                v[w] = s_carried | (x - u)
        lcs = np.int64(0)
        for w in range(num_words - 1):
            lcs += np.int64(_popcount(~v[w]))
        lcs += np.int64(_popcount(~v[num_words - 1] & last_low_bits))
        out[entry] = _rouge_f1(lcs, end - start, candidate_len)


def _compile(function):
    """njit with an on-disk cache (compiling takes a second or two); without a writable cache location, compile per
    run. nogil lets several Python threads run the kernel on different slices of the pool at once."""
    options = dict(fastmath=False, error_model="numpy", nogil=True)
    try:
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # numba found no writable cache directory (set NUMBA_CACHE_DIR to enable caching)
        return numba.njit(cache=False, **options)(function)


NUMBA_USABLE = numba is not None and not numba.config.DISABLE_JIT
if NUMBA_USABLE:
    _popcount = _compile(_popcount)
    _rouge_f1 = _compile(_rouge_f1)
    _build_match_masks = _compile(_build_match_masks)
    _f1_one_word = _compile(_f1_one_word)
    _f1_multi_word = _compile(_f1_multi_word)


# ---------------------------------------------------------------------------------------------------------------------


class RougeLIndex:
    """A growing pool of instructions that scores a new one against all of them, exactly as rouge_score would.

    `scores(c)[i] == RougeScorer(["rougeL"]).score(pool[i], c)["rougeL"].fmeasure` (F1 is symmetric bit for bit, so
    the original's `_score_lcs(new_tokens, pool_tokens)` gives the same value). Tokens are stored once as uint32 ids
    in a flat array that grows by doubling, so `add` is amortised O(tokens).

    num_threads: threads that share one `scores` call (rapidfuzz workers in the fallback); None or more than the
    cores this process may use means all of them.
    backend: "numba" (default when importable) or "rapidfuzz" (fallback, also exact).
    language: ISO 639-1 code choosing the tokenizer (`tokenizer_for`); "en" is rouge_score's, scores equal to it.
    `scores` may run in several threads at once, but not at the same time as `add`.
    """

    def __init__(self, instructions: Iterable[str] = (), num_threads: int | None = None, backend: str | None = None,
                 language: str = "en"):
        if backend is None:
            backend = "numba" if NUMBA_USABLE else "rapidfuzz"
        if backend == "numba" and not NUMBA_USABLE:
            raise ImportError("RougeLIndex backend 'numba' needs numba with JIT enabled; install numba "
                              "(see requirements.txt), unset NUMBA_DISABLE_JIT, or use backend='rapidfuzz'.")
        if backend not in ("numba", "rapidfuzz"):
            raise ValueError(f"Unknown RougeLIndex backend {backend!r}; use 'numba' or 'rapidfuzz'.")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"num_threads must be a positive integer or None (all cores), got {num_threads!r}.")
        self.backend = backend
        self.language = language
        self._tokenize = tokenizer_for(language)
        self.num_threads = min(num_threads or _available_cores(), _available_cores())
        self._helpers: ThreadPoolExecutor | None = None  # started on the first multi-threaded scores call
        self._token_ids: dict[str, int] = {}
        self._tokens = np.empty(1024, dtype=np.uint32)  # all entries' token ids, back to back
        self._offsets = np.zeros(1024, dtype=np.int64)  # entry i is _tokens[_offsets[i]:_offsets[i + 1]]
        self._size = 0
        self._entry_strings: list[str] = []  # rapidfuzz backend: each entry's ids as a string of code points
        self.add_many(instructions)

    def __len__(self) -> int:
        return self._size

    def _ids_for_pool(self, instruction: str) -> list[int]:
        token_ids = self._token_ids
        return [token_ids.setdefault(token, len(token_ids)) for token in self._tokenize(instruction)]

    def add(self, instruction: str) -> None:
        """Append one instruction to the pool (its score comes last in later `scores` arrays)."""
        self.add_many([instruction])

    def add_many(self, instructions: Iterable[str]) -> None:
        """Append instructions in order; one array copy for the whole batch (use this to load a 52K pool)."""
        id_lists = [self._ids_for_pool(instruction) for instruction in instructions]
        if not id_lists:
            return
        lengths = np.fromiter((len(ids) for ids in id_lists), dtype=np.int64, count=len(id_lists))
        new_size = self._size + len(id_lists)
        used = int(self._offsets[self._size])
        new_used = used + int(lengths.sum())
        if new_size + 1 > len(self._offsets):
            self._offsets = _grown(self._offsets, new_size + 1)
        if new_used > len(self._tokens):
            self._tokens = _grown(self._tokens, new_used)
        self._offsets[self._size + 1 : new_size + 1] = used + np.cumsum(lengths)
        flat = [token for ids in id_lists for token in ids]
        self._tokens[used:new_used] = np.asarray(flat, dtype=np.uint32) if flat else 0
        self._size = new_size
        if self.backend == "rapidfuzz":
            if len(self._token_ids) >= 0x110000:
                raise ValueError("The rapidfuzz backend encodes token ids as Unicode code points and supports at most "
                                 f"1,114,112 distinct tokens; this pool has {len(self._token_ids):,}. Use numba.")
            self._entry_strings.extend("".join(map(chr, ids)) for ids in id_lists)

    def scores(self, instruction: str) -> np.ndarray:
        """ROUGE-L F1 of `instruction` against every pool entry, in insertion order: float64, shape (len(self),)."""
        tokens = self._tokenize(instruction)
        out = np.zeros(self._size, dtype=np.float64)
        if not tokens or self._size == 0:
            return out  # rouge_score scores an empty token list 0 against anything
        # Tokens never seen in the pool match nothing; -1 keeps their position (the candidate's length counts them).
        candidate_ids = np.array([self._token_ids.get(token, -1) for token in tokens], dtype=np.int64)
        if self.backend == "rapidfuzz":
            return self._scores_rapidfuzz(candidate_ids)
        num_words = (len(tokens) + 63) // 64
        masks = _build_match_masks(candidate_ids, len(self._token_ids), num_words)
        if num_words == 1:
            kernel, masks = _f1_one_word, masks.reshape(-1)
        else:
            kernel = _f1_multi_word
        self._run_in_slices(kernel, (self._tokens, self._offsets, masks, len(tokens), out), self._size)
        return out

    def _run_in_slices(self, kernel, arguments: tuple, size: int) -> None:
        """Run kernel(*arguments, first, last) over entries 0..size-1 in slices shared by this thread and
        num_threads - 1 helper threads (the kernels release the GIL).

        Whoever is free takes the next slice, and a helper that has not started by the time this thread runs out of
        slices is cancelled, so a core taken by another process delays the call by one slice at most. (numba's
        prange waits for every thread instead: ~12 ms per call instead of ~2 ms when one of two cores is busy.)
        """
        num_slices = min(8 * self.num_threads, size // MIN_ENTRIES_PER_SLICE)
        if self.num_threads == 1 or num_slices < 2:
            kernel(*arguments, 0, size)
            return
        bounds = np.linspace(0, size, num_slices + 1).astype(np.int64).tolist()
        slices_left = list(range(num_slices - 1, -1, -1))  # list.pop is atomic: each slice is taken exactly once

        def take_slices() -> None:
            while True:
                try:
                    i = slices_left.pop()
                except IndexError:
                    return
                kernel(*arguments, bounds[i], bounds[i + 1])

        if self._helpers is None:
            self._helpers = ThreadPoolExecutor(self.num_threads - 1, thread_name_prefix="rouge_l")
        helpers = [self._helpers.submit(take_slices) for _ in range(self.num_threads - 1)]
        take_slices()
        for helper in helpers:
            if not helper.cancel():
                helper.result()

    def _scores_rapidfuzz(self, candidate_ids: np.ndarray) -> np.ndarray:
        from rapidfuzz import process
        from rapidfuzz.distance import LCSseq

        # Tokens unknown to the pool match nothing; any id no pool token has will do.
        candidate_ids = np.where(candidate_ids < 0, len(self._token_ids), candidate_ids)
        candidate = "".join(map(chr, candidate_ids.tolist()))
        lcs = process.cdist([candidate], self._entry_strings, scorer=LCSseq.similarity, dtype=np.int64,
                            workers=self.num_threads)[0]
        prediction_len = np.diff(self._offsets[: self._size + 1])
        # rouge_score's float operations, elementwise and in its order; 0/0 entries are replaced below.
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = lcs / prediction_len
            recall = lcs / len(candidate)
            f1 = 2 * precision * recall / (precision + recall)
        return np.where((lcs > 0) & (prediction_len > 0), f1, 0.0)


def _available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _grown(array: np.ndarray, needed: int) -> np.ndarray:
    """A copy of `array` with capacity at least max(needed, 2 * len(array)) (amortised doubling)."""
    bigger = np.zeros(max(needed, 2 * len(array)), dtype=array.dtype)
    bigger[: len(array)] = array
    return bigger
