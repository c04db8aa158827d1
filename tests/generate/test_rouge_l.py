"""RougeLIndex scores equal rouge_score's ROUGE-L F1 exactly (==), on both backends, for any strings."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
from rouge_score import rouge_scorer, tokenizers

from alpaca.generate import rouge_l
from alpaca.generate.rouge_l import RougeLIndex, most_similar, tokenize

BACKENDS = ["numba", "rapidfuzz"] if rouge_l.NUMBA_USABLE else ["rapidfuzz"]
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

# Few distinct words, so that long common subsequences (and carries across 64-bit words) are frequent; plus
# separators, capitals and non-ASCII that the tokenizer must treat exactly as rouge_score does.
WORDS = ["the", "a", "of", "list", "write", "story", "The", "LIST", "cat", "x1", "42", "ünï", "日本", "K", "İs", "ǅ"]
SEPARATORS = [" ", " ", " ", ", ", ". ", "\n", "\t", "-", "'", " ... ", "!", "/", "_", "é"]


def random_text(rng: random.Random, max_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(0, max_words))]
    text = "".join(word + rng.choice(SEPARATORS) for word in words)
    return text if rng.random() < 0.5 else text.strip()


def rouge_score_f1(pool_entry: str, candidate: str) -> float:
    """The reference: rouge_score's RougeScorer, pool entry as target, candidate as prediction."""
    return SCORER.score(pool_entry, candidate)["rougeL"].fmeasure


def original_f1(pool_entry: str, candidate: str) -> float:
    """What Alpaca's generator computed: _score_lcs(new instruction tokens, pool entry tokens)."""
    tokens = SCORER._tokenizer.tokenize
    return rouge_scorer._score_lcs(tokens(candidate), tokens(pool_entry)).fmeasure


def assert_equal_to_rouge_score(index: RougeLIndex, pool: list[str], candidates: list[str]) -> None:
    for candidate in candidates:
        scores = index.scores(candidate)
        assert scores.dtype == np.float64 and scores.shape == (len(pool),)
        reference = np.array([rouge_score_f1(entry, candidate) for entry in pool], dtype=np.float64)
        mismatched = np.flatnonzero(scores != reference)
        assert mismatched.size == 0, (
            f"candidate {candidate!r}: {mismatched.size} scores differ, first against {pool[mismatched[0]]!r}: "
            f"{scores[mismatched[0]]!r} != {reference[mismatched[0]]!r}"
        )


@pytest.fixture(scope="module")
def random_pool_and_candidates() -> tuple[list[str], list[str]]:
    rng = random.Random(1234)
    return [random_text(rng, 30) for _ in range(250)], [random_text(rng, 30) for _ in range(25)]


def test_tokenize_is_rouge_score_default_tokenizer():
    rng = random.Random(7)
    texts = [random_text(rng, 20) for _ in range(300)] + [
        "", "   ", "?!", "Ⅻ café ﬁle", "\u212a", "İstanbul", "ß STRASSE", "１２３ 123", "a\u0301b", "x_y-z",
        "tab\there",
    ]
    reference_tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
    for text in texts:
        assert tokenize(text) == reference_tokenizer.tokenize(text), text


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_equal_rouge_score_on_random_strings(backend, random_pool_and_candidates):
    pool, candidates = random_pool_and_candidates
    index = RougeLIndex(pool, backend=backend)
    assert len(index) == len(pool)
    assert_equal_to_rouge_score(index, pool, candidates)


def test_original_argument_order_gives_the_same_bits(random_pool_and_candidates):
    # Alpaca called _score_lcs(new, entry); RougeScorer.score(entry, new) swaps precision and recall. F1 is
    # symmetric bit for bit (2*p*r and p+r commute exactly), so one index serves both.
    pool, candidates = random_pool_and_candidates
    index = RougeLIndex(pool)
    for candidate in candidates[:10]:
        assert index.scores(candidate).tolist() == [original_f1(entry, candidate) for entry in pool]


ADVERSARIAL = [
    "", " ", "!!!", "...?", "---", "ünïcödé", "日本語のテキスト", "\u212a", "ǅ ǆ", "Ⅻ", "a", "A", "a a a a a a a",
    "the the the the", "list list", "a b c d e f g", "a b c d e f g h i j k l m", "g f e d c b a", "1 2 3", "x1 42",
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_equal_rouge_score_on_adversarial_strings(backend):
    index = RougeLIndex(ADVERSARIAL, backend=backend)
    assert_equal_to_rouge_score(index, ADVERSARIAL, ADVERSARIAL + ["unseen words only", "a zzz b"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_f1_is_computed_as_rouge_score_does_at_the_0_7_threshold(backend):
    # la=7, lb=13, L=7: 2*p*r/(p+r) is 0.7000000000000001 (dropped by "> 0.7"); 2L/(la+lb) would give 0.7 (kept).
    pool_entry = "a b c d e f g h i j k l m"
    candidate = "a b c d e f g"
    score = RougeLIndex([pool_entry], backend=backend).scores(candidate)[0]
    assert score == rouge_score_f1(pool_entry, candidate) == 0.7000000000000001
    assert score > 0.7 and 2 * 7 / (7 + 13) == 0.7


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_candidates_and_long_pool_entries(backend):
    # Candidate lengths around the 64-bit word boundaries exercise the multi-word kernel and its carries; pool
    # entries longer than the candidate, too.
    rng = random.Random(99)
    words = ["a", "b", "c", "d", "the"]
    candidates = [" ".join(rng.choice(words) for _ in range(n)) for n in (63, 64, 65, 127, 128, 129, 200)]
    pool = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 260))) for _ in range(14)]
    pool += ["a", "", candidates[2], " ".join(reversed(candidates[5].split()))]
    index = RougeLIndex(pool, backend=backend)
    assert_equal_to_rouge_score(index, pool, candidates)
    assert index.scores(candidates[2])[-2] == 1.0  # identical 65-token text
    # Whole words of identical tokens: a carry must ripple through a word that has no match of its own.
    blocks = [" ".join([a] * 64 + [b] * 64 + [c] * n) for a, b, c, n in [("a", "b", "a", 64), ("a", "b", "a", 70),
                                                                           ("a", "a", "b", 10), ("b", "a", "a", 64)]]
    short = ["a", "a a", "b a", "a b a", "a a b a", "b b b a a"]
    index = RougeLIndex(short, backend=backend)
    assert_equal_to_rouge_score(index, short, blocks)


@pytest.mark.parametrize("backend", BACKENDS)
def test_incremental_adds_equal_bulk_construction_in_insertion_order(backend):
    rng = random.Random(5)
    pool = [random_text(rng, 12) for _ in range(1500)]  # past the initial capacity of the flat arrays
    bulk = RougeLIndex(pool, backend=backend)
    incremental = RougeLIndex(backend=backend)
    assert len(incremental) == 0 and incremental.scores("anything").shape == (0,)
    half = RougeLIndex(pool[:700], backend=backend)
    half.add_many(pool[700:1000])
    for i, text in enumerate(pool):
        incremental.add(text)
        assert len(incremental) == i + 1
    for text in pool[1000:]:
        half.add(text)
    assert len(bulk) == len(incremental) == len(half) == len(pool)
    for candidate in pool[:5] + [random_text(rng, 12) for _ in range(5)]:
        expected = bulk.scores(candidate)
        assert np.array_equal(incremental.scores(candidate), expected)
        assert np.array_equal(half.scores(candidate), expected)
    # Insertion order: the score of an entry sits at its position, also for entries added after a scores call.
    incremental.add("a brand new instruction about penguins")
    scores = incremental.scores("penguins instruction")
    assert scores.shape == (len(pool) + 1,)
    assert scores[-1] == rouge_score_f1("a brand new instruction about penguins", "penguins instruction") > 0
    assert np.array_equal(scores[:-1], bulk.scores("penguins instruction"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_give_the_same_scores(backend, monkeypatch):
    # Enough entries for several slices per thread; pretend there are 4 cores so that the sharing code runs anywhere.
    monkeypatch.setattr(rouge_l, "_available_cores", lambda: 4)
    rng = random.Random(11)
    pool = [random_text(rng, 15) for _ in range(9000)]
    one_thread = RougeLIndex(pool, num_threads=1, backend=backend)
    four_threads = RougeLIndex(pool, num_threads=4, backend=backend)
    assert four_threads.num_threads == 4
    for candidate in [random_text(rng, 15) for _ in range(5)] + [" ".join(["a"] * 70)]:
        expected = one_thread.scores(candidate)
        assert np.array_equal(four_threads.scores(candidate), expected)
        sample = rng.sample(range(len(pool)), 200)
        assert expected[sample].tolist() == [rouge_score_f1(pool[i], candidate) for i in sample]


def test_backends_agree_on_a_larger_pool():
    if "numba" not in BACKENDS:
        pytest.skip("numba is not usable here")
    rng = random.Random(3)
    pool = [random_text(rng, 40) for _ in range(3000)]
    numba_index, rapidfuzz_index = RougeLIndex(pool, backend="numba"), RougeLIndex(pool, backend="rapidfuzz")
    for candidate in [random_text(rng, 40) for _ in range(20)] + [random_text(rng, 150) for _ in range(3)]:
        assert np.array_equal(numba_index.scores(candidate), rapidfuzz_index.scores(candidate))


def original_most_similar(rouge_scores: list[float], all_instructions: list[str]) -> dict[str, float]:
    """The original generator's recipe, on a list of Python floats."""
    return {all_instructions[i]: rouge_scores[i] for i in np.argsort(rouge_scores)[-10:][::-1]}


def test_most_similar_matches_the_original_recipe_with_ties_and_duplicates():
    rng = random.Random(2)
    pool = [random_text(rng, 6) for _ in range(400)] + ["list the cat"] * 3  # many tied scores, repeated texts
    index = RougeLIndex(pool)
    for candidate in ["list the cat", "the", "a of", "", random_text(rng, 6)]:
        reference_scores = [rouge_score_f1(entry, candidate) for entry in pool]
        ours = most_similar(index.scores(candidate), pool)
        expected = original_most_similar(reference_scores, pool)
        assert list(ours.items()) == list(expected.items())  # same texts, same values, same order
        assert all(type(value) is float for value in ours.values())
    scores = np.array([0.5, 0.2, 0.5, 0.9])
    assert list(most_similar(scores, ["a", "b", "c", "d"], k=10).items()) == list(
        original_most_similar(scores.tolist(), ["a", "b", "c", "d"]).items()
    )
    top_two = most_similar(scores, ["a", "b", "c", "d"], k=2)
    assert list(top_two.values()) == [0.9, 0.5] and list(top_two)[1] in ("a", "c")
    with pytest.raises(ValueError, match="k >= 1"):
        most_similar(scores, ["a", "b", "c", "d"], k=0)
    with pytest.raises(ValueError, match="3 instructions"):
        most_similar(scores, ["a", "b", "c"])


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="num_threads"):
        RougeLIndex(num_threads=0)
    with pytest.raises(ValueError, match="backend"):
        RougeLIndex(backend="cuda")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["numba missing", "jit disabled"])
def test_falls_back_to_rapidfuzz_without_numba(how, repo_dir):
    program = (
        "import sys\n"
        + ("sys.modules['numba'] = None\n" if how == "numba missing" else "")
        + "from alpaca.generate import rouge_l\n"
        "from rouge_score import rouge_scorer\n"
        "pool = ['Write a story about a cat.', '', 'a b c d e f g h i j k l m', 'List three cats!']\n"
        "index = rouge_l.RougeLIndex(pool)\n"
        "assert index.backend == 'rapidfuzz', index.backend\n"
        "scorer = rouge_scorer.RougeScorer(['rougeL'])\n"
        "for candidate in ['a story about cats', 'a b c d e f g', '', 'Write a story about a cat']:\n"
        "    expected = [scorer.score(p, candidate)['rougeL'].fmeasure for p in pool]\n"
        "    assert index.scores(candidate).tolist() == expected, candidate\n"
        "print('fallback ok')\n"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1" if how == "jit disabled" else "0")
    result = subprocess.run([sys.executable, "-c", program], cwd=repo_dir, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "fallback ok" in result.stdout, result.stderr


@pytest.mark.slow
def test_compiles_without_a_writable_cache_directory(repo_dir):
    if "numba" not in BACKENDS:
        pytest.skip("numba is not usable here")
    # numba raises at decoration when no cache location is writable; rouge_l must then compile without a cache.
    program = (
        "import numba.core.caching as caching\n"
        "caching.CacheImpl._locator_classes = []  # as if no directory were writable\n"
        "from alpaca.generate import rouge_l\n"
        "assert type(rouge_l._f1_one_word._cache).__name__ == 'NullCache'\n"
        "index = rouge_l.RougeLIndex(['a b c d e f g h i j k l m', 'x y'])\n"
        "assert index.backend == 'numba'\n"
        "assert index.scores('a b c d e f g').tolist() == [0.7000000000000001, 0.0]\n"
        "print('uncached ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], cwd=repo_dir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "uncached ok" in result.stdout, result.stderr


# -- other languages: units of alpaca.generate.language -----------------------------------------------------------

HAN = list("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后")
CHINESE_PUNCTUATION = ["，", "。", "？", "！", "：", " ", "、", "《", "》"]


def character_lcs_f1(target: str, prediction: str) -> float:
    """The reference: characters (letters and digits, lower-cased) as tokens, LCS by the textbook dynamic programme,
    F1 with rouge_score's float operations."""
    a = [ch for ch in target.lower() if ch.isalnum()]
    b = [ch for ch in prediction.lower() if ch.isalnum()]
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def random_chinese(rng: random.Random, max_chars: int, alphabet: list[str]) -> str:
    return "".join(rng.choice(alphabet) + (rng.choice(CHINESE_PUNCTUATION) if rng.random() < 0.1 else "")
                   for _ in range(rng.randint(0, max_chars)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_chinese_scores_equal_a_character_level_reference_on_random_pairs(backend):
    rng = random.Random(2024)
    # A small alphabet makes long common subsequences frequent; up to 150 characters crosses the 64-bit words.
    pool = [random_chinese(rng, 150, HAN[:12]) for _ in range(120)] + [random_chinese(rng, 40, HAN)
                                                                       for _ in range(120)] + ["", "，。"]
    candidates = [random_chinese(rng, 150, HAN[:12]) for _ in range(10)] + [random_chinese(rng, 40, HAN)
                                                                            for _ in range(10)]
    index = RougeLIndex(pool, backend=backend, language="zh")
    for candidate in candidates:
        assert index.scores(candidate).tolist() == [character_lcs_f1(entry, candidate) for entry in pool], candidate


def test_chinese_near_duplicates_one_character_apart_score_above_the_threshold():
    instruction = "请用三句话解释为什么天空是蓝色的。"
    one_apart = "请用三句话解释为什么天空是蓝色。"
    unrelated = "列出下面这封邮件中提到的所有日期。"
    english_index = RougeLIndex([instruction])  # rouge_score's tokenizer: no token at all, every pair scores 0
    assert english_index.scores(one_apart)[0] == 0.0
    index = RougeLIndex([instruction, unrelated], language="zh")
    near, far = index.scores(one_apart)
    assert near == character_lcs_f1(instruction, one_apart) > 0.9 and far < 0.3


def test_other_languages_score_casefolded_unicode_words():
    index = RougeLIndex(["Übersetze den Satz über die Straße."], language="de")
    # Same words in other cases and spellings (ß == ss after casefolding, a decomposed umlaut): identical.
    assert index.scores("ÜBERSETZE den Satz u\u0308ber die STRASSE")[0] == 1.0
    assert rouge_l.tokenizer_for("en") is tokenize and rouge_l.tokenizer_for("zh")("写诗") == ["写", "诗"]
