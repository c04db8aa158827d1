"""The root verb of an instruction and its direct object, as in the Alpaca data figure, with spaCy.

For each instruction: the first sentence's root token when it is a verb, and its `dobj` child when that is a
noun, both as lower-case lemmas ("Give three tips for staying healthy." -> ("give", "tip")). `top_verb_objects`
counts them: the most common verbs, each with its most common objects. spaCy and an English pipeline
(`python -m spacy download en_core_web_sm`) are needed only to parse; the extraction works on any parsed `Doc`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

INSTALL_HINT = ("the verb/object statistics need a spaCy English pipeline: install one with "
                "`python -m spacy download en_core_web_sm` (or pass --spacy_model NAME_OR_PATH).")


def verb_object(doc) -> tuple[str | None, str | None]:
    """(verb lemma, direct-object noun lemma) of a parsed spaCy Doc: the root of its first sentence when that is
    a VERB, and the root's first `dobj` child when that is a NOUN; None for what is not there."""
    sentence = next(iter(doc.sents), None)
    if sentence is None:
        return None, None
    root = sentence.root
    if root.pos_ != "VERB":
        return None, None
    obj = next((child for child in root.children if child.dep_ == "dobj" and child.pos_ == "NOUN"), None)
    return root.lemma_.lower(), obj.lemma_.lower() if obj is not None else None


def load_pipeline(name: str):
    """(the spaCy pipeline `name` without its entity recognizer, None) when it is installed (a package name or a
    directory) and parses dependencies, else (None, one sentence saying what is missing and how to install it)."""
    try:
        import spacy
    except ImportError:
        return None, f"spaCy is not installed; {INSTALL_HINT}"
    try:
        nlp = spacy.load(name, exclude=["ner"])
    except OSError:  # E050: no such package or directory
        return None, f"spaCy pipeline {name!r} not found; {INSTALL_HINT}"
    if "parser" not in nlp.pipe_names:
        return None, f"spaCy pipeline {name!r} has no dependency parser; {INSTALL_HINT}"
    return nlp, None


def extract_all(nlp, instructions: Iterable[str], total: int | None = None) -> list[tuple[str | None, str | None]]:
    """verb_object of every instruction, parsed in batches with a progress bar."""
    from tqdm import tqdm

    docs = nlp.pipe(instructions, batch_size=256)
    # leave=True, as stats' other bar: a cleared bar ends without a newline and the report would follow on its line
    return [verb_object(doc) for doc in tqdm(docs, total=total, desc="parsing", unit="instr", leave=True)]


def top_verb_objects(pairs: Iterable[tuple[str | None, str | None]], num_verbs: int = 20,
                     num_objects: int = 4) -> dict:
    """Counts of the extracted pairs.

    Returns {"with_verb": instructions with a root verb, "with_verb_object": with a verb and its object,
    "top": [{"verb", "count" (pairs with that verb and any object), "objects": [[noun, count], ...]}]}: the
    `num_verbs` verbs with most verb-object pairs, most common first, each with its `num_objects` commonest
    objects. As in the Alpaca figure, only verb-object pairs count towards the ranking.
    """
    pairs = list(pairs)
    with_object = [(verb, obj) for verb, obj in pairs if verb and obj]
    verb_counts = Counter(verb for verb, _ in with_object)
    objects_by_verb: dict[str, Counter] = {}
    for verb, obj in with_object:
        objects_by_verb.setdefault(verb, Counter())[obj] += 1
    top = [{"verb": verb, "count": count,
            "objects": [[obj, n] for obj, n in objects_by_verb[verb].most_common(num_objects)]}
           for verb, count in verb_counts.most_common(num_verbs)]
    return {"with_verb": sum(1 for verb, _ in pairs if verb), "with_verb_object": len(with_object), "top": top}
