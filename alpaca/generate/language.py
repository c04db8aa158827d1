"""Languages for Self-Instruct beyond English: which language a text is in, and the units it is measured in.

    detect_language("Schreibe ein Gedicht über den Herbst.")   # "de"
    units("用Python写代码")                                    # ["用", "python", "写", "代", "码"]
    count_units("Nenne drei Vorteile von Python.", "de")       # 5 (words); in "zh" and "ja" characters count

Language identification is lingua (lingua-language-detector, pinned in requirements.txt): its n-gram models of 75
languages are compiled into the wheel, so nothing is downloaded at run time. We use its high-accuracy mode over all
75 languages: on short instructions its low-accuracy mode mistook German for Norwegian and Albanian ("Nenne drei
Songs von den Beatles.", "Gib mir ein Rezept für Pancakes."), the high-accuracy mode did not. The cost is paid once
per process, on the first text in a script with many languages (Latin): ~9 s and ~900 MB of models; after that a
short instruction takes ~1-2 ms (Chinese and Japanese are told apart by their characters, in well under 1 ms).

Units: scripts written without spaces between words (Chinese, Japanese kana, Thai, Lao, Khmer, Myanmar) count one
unit per character; every other run of letters and digits is one word, casefolded (so "Straße" and "STRASSE" are
one word) after NFKC normalisation (full-width letters and decomposed umlauts become the usual ones). The ROUGE-L
filter (rouge_l.py) scores these units for every language but English, where it keeps rouge_score's tokenizer.
"""

from __future__ import annotations

import re
import threading
import unicodedata

from alpaca.errors import UsageError

# ISO 639-1 codes lingua knows (its 75 languages); a --language outside them cannot be checked.
SUPPORTED_LANGUAGES = frozenset(
    "af ar az be bg bn bs ca cs cy da de el en eo es et eu fa fi fr ga gu he hi hr hu hy id is it ja ka kk ko la lg "
    "lt lv mi mk mn mr ms nb nl nn pa pl pt ro ru sk sl sn so sq sr st sv sw ta te th tl tn tr ts uk ur vi xh yo zh "
    "zu".split())
# Names for the prompt: English name, and the language's own name where it differs (the teacher reads both).
NAMES = {
    "ar": ("Arabic", "العربية"), "bg": ("Bulgarian", "български"), "ca": ("Catalan", "català"),
    "cs": ("Czech", "čeština"), "da": ("Danish", "dansk"), "de": ("German", "Deutsch"), "el": ("Greek", "Ελληνικά"),
    "en": ("English", "English"), "es": ("Spanish", "español"), "fa": ("Persian", "فارسی"),
    "fi": ("Finnish", "suomi"), "fr": ("French", "français"), "he": ("Hebrew", "עברית"), "hi": ("Hindi", "हिन्दी"),
    "hu": ("Hungarian", "magyar"), "id": ("Indonesian", "Bahasa Indonesia"), "it": ("Italian", "italiano"),
    "ja": ("Japanese", "日本語"), "ko": ("Korean", "한국어"), "nl": ("Dutch", "Nederlands"),
    "nb": ("Norwegian Bokmål", "norsk bokmål"), "pl": ("Polish", "polski"), "pt": ("Portuguese", "português"),
    "ro": ("Romanian", "română"), "ru": ("Russian", "русский"), "sv": ("Swedish", "svenska"),
    "th": ("Thai", "ไทย"), "tr": ("Turkish", "Türkçe"), "uk": ("Ukrainian", "українська"),
    "vi": ("Vietnamese", "Tiếng Việt"), "zh": ("Chinese", "中文"),
}

# Characters of scripts written without spaces between words: one unit each. Han (with extensions and compatibility
# ideographs), hiragana, katakana (not its punctuation: the middle dot and the double hyphen), Thai, Lao, Khmer and
# Myanmar letters and marks (the marks of these scripts are no \w in Python, so a word regex would cut words apart).
SPACELESS = ("\u3041-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
             "\U00020000-\U0003134f\u0e01-\u0e3a\u0e40-\u0e4e\u0e50-\u0e59\u0e81-\u0edf\u1780-\u17d3\u17e0-\u17e9"
             "\u1000-\u1049")
_UNIT_RE = re.compile(rf"[{SPACELESS}]|(?:(?![{SPACELESS}])[^\W_])+")
_SPACELESS_RE = re.compile(rf"[{SPACELESS}]")
CHARACTER_LANGUAGES = frozenset({"zh", "ja", "th"})  # written without spaces: lengths in characters

# Length limits in the language's units: an instruction is dropped as `length` when it has at most the first or
# more than the second. The original's 3 and 150 words hold for every language written with spaces; for the others
# the limits are the same lengths in characters at a typical rate per English word (Chinese ~1.7, Japanese ~2.5,
# Thai ~5 code points with its vowel marks): estimates, not measurements.
WORD_LIMITS = (3, 150)
CHARACTER_LIMITS = {"zh": (5, 250), "ja": (7, 375), "th": (15, 750)}

# The original's blacklist ("image", "graph", "draw", "go to", ...: tasks a text-only model cannot do), its intent
# written for German (whole words, any case) and Chinese (substrings: Chinese has no spaces to find words by).
# Other languages have none: their blacklist filter is off (docs/languages.md says so).
BLACKLISTS = {
    "de": ["bild", "bilder", "bildern", "foto", "fotos", "grafik", "grafiken", "diagramm", "diagramme", "diagrammen",
           "flussdiagramm", "flussdiagramme", "datei", "dateien", "landkarte", "landkarten", "zeichne", "zeichnen",
           "zeichnung", "zeichnungen", "plotte", "plotten", "video", "videos", "audio", "musik", "geh zu", "gehe zu",
           "geh zum", "gehe zum", "geh zur", "gehe zur"],
    "zh": ["图片", "图像", "照片", "画一", "画出", "画个", "绘制", "绘图", "图表", "曲线图", "柱状图", "饼图", "流程图",
           "示意图", "思维导图", "地图", "视频", "音频", "音乐", "文件", "录音", "前往"],
}
# The original drops instructions starting "Write a program" (models prefix it to ordinary tasks); the same
# openings in German and Chinese. Other languages: off.
PROGRAM_PREFIXES = {
    "de": ["Schreibe ein Programm", "Schreiben Sie ein Programm"],
    "zh": ["编写一个程序", "写一个程序", "编写程序", "写一段程序"],
}

# Below this many letters (or characters of a spaceless script) an output's language is not judged: "Mixed",
# "42", "1. März" say too little, and lingua guesses wildly on them.
MIN_LETTERS, MIN_SPACELESS_CHARACTERS = 20, 5
_CODE_RE = re.compile(r"```.*?(```|$)|`[^`\n]*`", flags=re.DOTALL)  # code says nothing of the prose's language


def check_language(code: str) -> str:
    """The ISO 639-1 code `code` names, lower-cased; UsageError when lingua cannot identify that language."""
    normalised = str(code).strip().lower()
    if normalised not in SUPPORTED_LANGUAGES:
        raise UsageError(f"--language must be an ISO 639-1 code of a language the language check knows (such as de, "
                         f"fr, zh, ja), not {code!r}; the 75 known: {' '.join(sorted(SUPPORTED_LANGUAGES))}.")
    return normalised


def language_name(code: str) -> str:
    """How the prompt names a language: "German (Deutsch)", "Chinese (中文)"; lingua's English name otherwise."""
    if code in NAMES:
        english, native = NAMES[code]
        return english if english == native else f"{english} ({native})"
    from lingua import IsoCode639_1, Language

    return Language.from_iso_code_639_1(IsoCode639_1.from_str(code)).name.replace("_", " ").title()


def units(text: str) -> list[str]:
    """The units of `text` for any language but English: one per character of a spaceless script, one per run of
    other letters and digits (casefolded), after NFKC normalisation. Punctuation, spaces and symbols are no unit."""
    return _UNIT_RE.findall(unicodedata.normalize("NFKC", text).casefold())


# Characters counted at a time by count_units: the list of a text's words costs ~10 times the text (a str object
# per word), which for one 200 MB record made `data_tools.py stats` peak at 3.4 GB.
COUNT_SLICE_CHARACTERS = 1 << 20


def count_units(text: str, language: str) -> int:
    """The length of `text` as the length filter counts it: for English the original's whitespace-separated words
    (len(text.split())), for every other language len(units(text)). A long text is counted without a list of
    all its words."""
    if language != "en":
        if len(text) <= COUNT_SLICE_CHARACTERS:
            return len(units(text))
        return sum(1 for _ in _UNIT_RE.finditer(unicodedata.normalize("NFKC", text).casefold()))
    if len(text) <= COUNT_SLICE_CHARACTERS:
        return len(text.split())
    count = 0
    for start in range(0, len(text), COUNT_SLICE_CHARACTERS):
        count += len(text[start:start + COUNT_SLICE_CHARACTERS].split())
        if start and not text[start - 1].isspace() and not text[start].isspace():
            count -= 1  # a word across the slice boundary was counted in both slices
    return count


def length_limits(language: str) -> tuple[int, int]:
    """(at most, more than): an instruction with at most the first or more than the second units is too short or
    too long."""
    return CHARACTER_LIMITS.get(language, WORD_LIMITS)


_detector = None
_detector_lock = threading.Lock()


def detector():
    """lingua's detector over its 75 languages, high-accuracy mode; built once per process (models load lazily)."""
    global _detector
    with _detector_lock:
        if _detector is None:
            from lingua import LanguageDetectorBuilder

            _detector = LanguageDetectorBuilder.from_all_languages().build()
    return _detector


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code of the language `text` is most likely in, or None when lingua cannot tell (no letters)."""
    found = detector().detect_language_of(text)
    return found.iso_code_639_1.name.lower() if found is not None else None


def detect_languages(texts: list[str]) -> list[str | None]:
    """detect_language of each text, computed in lingua's own threads (for whole files)."""
    found = detector().detect_languages_in_parallel_of(list(texts))
    return [f.iso_code_639_1.name.lower() if f is not None else None for f in found]


def says_enough(text: str) -> bool:
    """Whether `text`, its code left out, holds enough prose to judge its language: at least MIN_LETTERS letters or
    MIN_SPACELESS_CHARACTERS characters of a spaceless script."""
    prose = _CODE_RE.sub(" ", text)
    return (len(_SPACELESS_RE.findall(prose)) >= MIN_SPACELESS_CHARACTERS
            or sum(ch.isalpha() for ch in prose) >= MIN_LETTERS)


def is_in_language(text: str, code: str) -> bool:
    """Whether lingua names `code` as the language of `text`. For Chinese, Japanese and Thai a text without one
    character of their scripts is not in them, decided without lingua (which would load the models of every
    Latin-script language, ~9 s, to name the language of an English text)."""
    if code in CHARACTER_LANGUAGES and not _SPACELESS_RE.search(text):
        return False
    return detect_language(text) == code


def prose_in_other_language(text: str, code: str) -> bool:
    """Whether `text`, its code left out, holds enough prose to judge (says_enough) and that prose is not in
    `code`: the output check (short outputs such as "42" or "Mixed", and code, say nothing of their language)."""
    prose = _CODE_RE.sub(" ", text)
    return says_enough(prose) and not is_in_language(prose, code)


def prose_language(text: str) -> str | None:
    """The language of `text` with its code (``` blocks and `inline` spans) left out; None when too little is left
    to tell (says_enough)."""
    if not says_enough(text):
        return None
    return detect_language(_CODE_RE.sub(" ", text))


def prompt_language_rule(code: str) -> str:
    """Requirement 5 of prompt.txt for a language other than English: every field in that language, written
    natively, with the machine markers kept as shown (one parser serves every language)."""
    name = language_name(code)
    return (f"5. Write every instruction, input and output in {name}, as a native speaker would write them for "
            f"{NAMES.get(code, (name,))[0]}-speaking readers: their own topics, names and idioms, not translations "
            f"from English. Keep the markers \"Instruction:\", \"Input:\", \"Output:\" and <noinput> in English, "
            f"exactly as shown.")
