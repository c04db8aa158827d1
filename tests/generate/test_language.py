"""alpaca/generate/language.py: units per language, the language check, the codes it accepts."""

import pytest

from alpaca import cli
from alpaca.generate import language


def test_units_are_characters_in_spaceless_scripts_and_casefolded_words_elsewhere():
    assert language.units("用Python写一个排序函数。") == ["用", "python", "写", "一", "个", "排", "序", "函", "数"]
    # NFKC: a decomposed umlaut and full-width letters become the usual ones; casefold: ß == ss.
    assert language.units("Über u\u0308ber STRASSE Straße, ＰＹＴＨＯＮ!") == ["über", "über", "strasse", "strasse",
                                                                            "python"]
    assert language.units("カタカナ・ひらがな") == list("カタカナひらがな")  # the middle dot is punctuation
    assert language.units("ไทย ง่าย") == ["ไ", "ท", "ย", "ง", "\u0e48", "า", "ย"]  # Thai marks are units too
    assert language.units(" ,.!? ") == []


def test_lengths_count_the_language_units():
    assert language.count_units("Nenne drei Vorteile von Python.", "de") == 5
    assert language.count_units("说出电动汽车的三个优点。", "zh") == 11
    english = "Write a poem -- about rain."
    assert language.count_units(english, "en") == len(english.split()) == 6  # the original's count, "--" included
    assert language.length_limits("zh") == (5, 250) and language.length_limits("de") == (3, 150)


def test_language_codes_are_checked():
    assert language.check_language(" DE ") == "de"
    with pytest.raises(cli.UsageError, match="ISO 639-1"):
        language.check_language("german")
    assert language.language_name("de") == "German (Deutsch)" and language.language_name("yo") == "Yoruba"


def test_chinese_and_japanese_are_told_apart_and_short_outputs_are_not_judged():
    assert language.detect_language("请写一首关于秋天第一场冷雨的诗。") == "zh"
    assert language.detect_language("秋についての短い詩を書いてください。") == "ja"
    assert language.prose_language("Mixed") is None and language.prose_language("42") is None
    # Code is left out before judging: what is left of this output is too short to tell.
    assert language.prose_language("```python\ndef reverse_words(sentence):\n    return sentence\n```\n好") is None


@pytest.mark.slow  # the first Latin-script text loads lingua's Latin-script models (~9 s)
def test_german_and_english_instructions_are_told_apart():
    german = ["Erkläre den Unterschied zwischen Wetter und Klima.", "Gib mir ein Rezept für Pancakes.",
              "Nenne drei Songs von den Beatles.", "Liste drei Vorteile von Python auf."]
    english = ["Explain the difference between weather and climate.", "Give me a recipe for pancakes.",
               "Name three songs by the Beatles.", "List three advantages of Python."]
    assert language.detect_languages(german) == ["de"] * 4
    assert [language.detect_language(text) for text in english] == ["en"] * 4
