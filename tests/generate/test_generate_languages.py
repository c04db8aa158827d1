"""generate_instruction.py --language: loopback teachers (alpaca/testing/openai_server.py) that answer in a mix of the
target language and English, in German and in Chinese. Kept instructions must all be native, near-duplicates
(one character apart in Chinese) removed, the drops named; English stays as it was."""

import hashlib
import json
import pathlib
import random

import pytest
from test_rouge_l import character_lcs_f1

from alpaca.generate import journal as run_journal
from alpaca.generate import self_instruct as gi
from alpaca.testing.openai_server import WORDS, fake_tasks
from conftest import task

GERMAN_VERBS = ["Erkläre", "Beschreibe", "Begründe", "Schildere", "Erläutere", "Vergleiche", "Bewerte", "Nenne"]
GERMAN_ADVERBS = ["kurz", "genau", "ausführlich", "einfach", "anschaulich", "sachlich", "höflich", "knapp"]
GERMAN_NOUNS = ["die Brücke", "der Käse", "das Fahrrad", "die Küche", "der Bäcker", "das Gewürz", "die Schule",
                "der Wald", "die Ärztin", "das Märchen", "der Frühling", "die Gemüsesuppe", "der Straßenbahnfahrer",
                "die Steuererklärung", "das Ehrenamt", "der Schrebergarten", "die Mülltrennung", "das Wörterbuch",
                "die Nachbarschaft", "der Wochenmarkt", "die Großmutter", "das Hörspiel", "der Gletscher",
                "die Ausbildung"]
GERMAN_TEMPLATES = ["{verb} {adverb}, warum {a} für {b} so wichtig ist.",
                    "{verb} in drei Sätzen, was {a} mit {b} gemeinsam hat.",
                    "Wie würdest du einem Kind erklären, wie {a} und {b} zusammenhängen?",
                    "{verb} {adverb} die Vorteile und Nachteile, wenn {a} und {b} getrennt werden."]
GERMAN_OUTPUT = "Das hängt davon ab, wie man es betrachtet, aber im Alltag spielt es eine große Rolle für uns alle."
ENGLISH_OUTPUT = "It depends on how you look at it, but in everyday life it plays a large role for all of us."

CHINESE_VERBS = ["解释", "说明", "描述", "分析", "比较", "总结", "评价", "介绍"]
CHINESE_TOPICS = ["长城", "春节", "熊猫", "茶叶", "高铁", "饺子", "京剧", "书法", "太极拳", "丝绸之路", "中秋节",
                  "火锅", "黄河", "故宫", "围棋", "二十四节气", "四大发明", "西湖", "端午节", "兵马俑"]
CHINESE_ASPECTS = ["历史由来", "文化意义", "主要特点", "发展变化", "对年轻人的影响", "在国外的名声"]
CHINESE_OUTPUT = "这个问题可以从几个方面来看：首先要了解它的背景，其次要看它在今天的生活中起什么作用。"


def german_instruction(rng: random.Random) -> str:
    a, b = rng.sample(GERMAN_NOUNS, 2)
    return rng.choice(GERMAN_TEMPLATES).format(verb=rng.choice(GERMAN_VERBS), adverb=rng.choice(GERMAN_ADVERBS),
                                               a=a, b=b)


def chinese_instruction(rng: random.Random) -> str:
    topic_a, topic_b = rng.sample(CHINESE_TOPICS, 2)
    return rng.choice([f"请{rng.choice(CHINESE_VERBS)}{topic_a}的{rng.choice(CHINESE_ASPECTS)}。",
                       f"{rng.choice(CHINESE_VERBS)}一下{topic_a}和{topic_b}有什么不同？",
                       f"用三句话向外国朋友{rng.choice(CHINESE_VERBS)}{topic_a}的{rng.choice(CHINESE_ASPECTS)}。"])


def english_instruction(rng: random.Random) -> str:
    return f"Describe the {' '.join(rng.sample(WORDS, 6))} for a beginner."


def one_character_apart(text: str, rng: random.Random) -> str:
    """`text` with one of its Chinese characters (not the last, the punctuation) replaced by another."""
    position = rng.randrange(1, len(text) - 2)
    return text[:position] + rng.choice([c for c in "的了是在有个" if c != text[position]]) + text[position + 1:]


class MixedTeacher:
    """A teacher that continues the list in the target language, but also in English, and with near-copies.

    Per prompt: 4 native tasks; a near-copy of the first (one word or one character changed); 2 English tasks;
    a native instruction answered in English; an English instruction answered natively; a native task with a
    short output ("42", which says nothing of its language). `native` and `foreign` collect the instructions
    written, so that a test can tell which kept ones are native."""

    def __init__(self, language: str):
        self.language = language
        self.native: set[str] = set()
        self.foreign: set[str] = set()
        self.prompts: list[str] = []

    def __call__(self, path: str, prompt: str, body: dict):
        self.prompts.append(prompt)
        rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
        make = german_instruction if self.language == "de" else chinese_instruction
        native_output = GERMAN_OUTPUT if self.language == "de" else CHINESE_OUTPUT
        natives = [make(rng) for _ in range(4)]
        if self.language == "de":
            words = natives[0].split()
            near = " ".join(words[:-1] + ["bedeutsam."] if words[-1] != "bedeutsam." else words[:-1] + ["wichtig."])
        else:
            near = one_character_apart(natives[0], rng)
        english = [english_instruction(rng) for _ in range(2)]
        native_with_english_output = make(rng)
        english_with_native_output = english_instruction(rng)
        native_short_output = make(rng)
        self.native.update(natives + [near, native_short_output])
        self.foreign.update(english + [native_with_english_output, english_with_native_output])
        pieces = ([(text, native_output) for text in natives] + [(near, native_output)]
                  + [(text, ENGLISH_OUTPUT) for text in english]
                  + [(native_with_english_output, ENGLISH_OUTPUT), (english_with_native_output, native_output),
                     (native_short_output, "42")])
        text = "".join(task(number, instruction, output=output)
                       for number, (instruction, output) in enumerate(pieces, start=4))
        return text[len("4. Instruction:"):], "stop"


def write_seed_file(path: pathlib.Path, instructions: list[str], output: str) -> str:
    path.write_text("".join(json.dumps({"id": f"seed_task_{i}", "instruction": text,
                                        "instances": [{"input": "", "output": output}]}, ensure_ascii=False) + "\n"
                            for i, text in enumerate(instructions)), encoding="utf-8")
    return str(path)


def run(server, output_dir, seeds, **kwargs) -> list[dict]:
    settings = {"num_instructions_to_generate": 1000, "max_requests": 3, "request_batch_size": 2,
                "retry_base_delay": 0.001, "num_cpus": 1, **kwargs}
    return gi.generate_instruction_following_data(output_dir=str(output_dir), seed_tasks_path=seeds,
                                                  api_base=server.url, **settings)


def drops_of(output_dir) -> dict:
    total = {}
    for line in (pathlib.Path(output_dir) / run_journal.JOURNAL_NAME).read_text().splitlines():
        for reason, n in json.loads(line)["dropped"].items():
            total[reason] = total.get(reason, 0) + n
    return total


def test_chinese_run_keeps_only_chinese_and_drops_one_character_near_duplicates(openai_server, tmp_path, capsys):
    teacher = MixedTeacher("zh")
    openai_server.responder = teacher
    rng = random.Random(3)
    seeds = write_seed_file(tmp_path / "seeds.zh.jsonl", [chinese_instruction(rng) for _ in range(8)], CHINESE_OUTPUT)
    kept = run(openai_server, tmp_path / "zh", seeds, language="zh")
    instructions = [k["instruction"] for k in kept]
    assert instructions and set(instructions) <= teacher.native
    # 6 requests' worth of prompts (3 requests x 2): 4 foreign tasks each are dropped as `language`.
    drops = drops_of(tmp_path / "zh")
    assert drops["language"] == 4 * len(teacher.prompts)
    assert drops["similarity"] >= len(teacher.prompts)  # each prompt's near-copy, at least
    # No two kept instructions (nor a kept one and a seed) are near-duplicates over characters.
    pool = [json.loads(line)["instruction"] for line in open(seeds, encoding="utf-8")] + instructions
    for i, later in enumerate(instructions):
        earlier = pool[: len(pool) - len(instructions) + i]
        assert max(character_lcs_f1(e, later) for e in earlier) <= 0.7, later
        assert kept[i]["most_similar_instructions"]  # scored against the pool, not all zeros
    assert max(kept[-1]["most_similar_instructions"].values()) > 0
    # The prompt asks for Chinese, and keeps the machine markers.
    prompt = teacher.prompts[0]
    assert "in Chinese (中文)" in prompt and "Write all instructions in English." not in prompt
    assert prompt.endswith("###\n4. Instruction:") and "1. Input:\n<noinput>\n1. Output:" in prompt
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "language 24" in summary and "similarity" in summary
    print(summary)  # what the run dropped, for the docs (pytest -s shows it)


@pytest.mark.slow  # German text makes lingua load its Latin-script models (~9 s)
def test_german_run_keeps_only_german(openai_server, tmp_path, capsys):
    teacher = MixedTeacher("de")
    openai_server.responder = teacher
    rng = random.Random(4)
    seeds = write_seed_file(tmp_path / "seeds.de.jsonl", [german_instruction(rng) for _ in range(8)], GERMAN_OUTPUT)
    kept = run(openai_server, tmp_path / "de", seeds, language="de")
    instructions = [k["instruction"] for k in kept]
    assert instructions and set(instructions) <= teacher.native
    drops = drops_of(tmp_path / "de")
    assert drops["language"] == 4 * len(teacher.prompts)
    assert drops["similarity"] >= len(teacher.prompts)
    assert any(k["output"] == "42" for k in kept)  # a short output is not judged
    assert "in German (Deutsch)" in teacher.prompts[0]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "language 24" in summary
    print(summary)


def test_german_filters_per_language():
    assert gi.filter_drop_reason("Übersetze den folgenden Satz ins Englische.", "de") is None
    assert gi.filter_drop_reason("Übersetze den folgenden Satz ins Englische.") == "non_ascii"  # English rules
    assert gi.filter_drop_reason("Zeichne ein Bild von einem Hund.", "de") == "blacklist"
    assert gi.filter_drop_reason("Erkläre die Bildung von Wolken.", "de") is None  # "Bildung" is no "Bild"
    assert gi.filter_drop_reason("Gehe zur nächsten Haltestelle und frage dort.", "de") == "blacklist"
    assert gi.filter_drop_reason("Schreibe ein Programm, das Primzahlen ausgibt.", "de") == "write_a_program"
    assert gi.filter_drop_reason("„Zitiere“ diesen Satz in einem förmlichen Ton.", "de") == "punctuation"
    assert gi.filter_drop_reason("Nenne drei Farben.", "de") == "length"  # 3 words, as the original


def test_chinese_filters_per_language():
    assert gi.filter_drop_reason("说出电动汽车的三个优点。", "zh") is None
    assert gi.filter_drop_reason("说出电动汽车的三个优点。") == "length"  # one "word" to the original
    # 5 characters (about 3 words, the original's limit) are too short; 6 are enough.
    assert gi.filter_drop_reason("一年有几天？", "zh") == "length"
    assert gi.filter_drop_reason("一年有多少天？", "zh") is None
    assert gi.filter_drop_reason("请画出一张中国地图。", "zh") == "blacklist"
    assert gi.filter_drop_reason("写一个程序计算两个数的和。", "zh") == "write_a_program"
    assert gi.filter_drop_reason("《红楼梦》的作者是谁？请简单介绍。", "zh") == "punctuation"
    assert gi.filter_drop_reason("😀表情在聊天中表达什么意思？", "zh") == "first_character"


def test_english_is_unchanged_by_the_language_flag(openai_server, tmp_path):
    seeds = write_seed_file(tmp_path / "seeds.jsonl", [f"Tell me something useful about topic number {i}."
                                                       for i in range(8)], "An answer.")
    openai_server.responder = lambda path, prompt, body: (fake_tasks(prompt), "stop")
    run(openai_server, tmp_path / "default", seeds)
    run(openai_server, tmp_path / "en", seeds, language="en")
    assert (tmp_path / "default" / "regen.json").read_bytes() == (tmp_path / "en" / "regen.json").read_bytes()
    bodies = [json.dumps(body, sort_keys=True) for body in openai_server.bodies()]  # in any order (concurrency)
    assert sorted(bodies[: len(bodies) // 2]) == sorted(bodies[len(bodies) // 2:])
    frame = pathlib.Path(gi.PROMPT_PATH).read_text()
    assert all(json.loads(body)["prompt"][0].startswith(frame + "\n###\n1. Instruction:") for body in bodies)


def translating_teacher(path: str, prompt: str, body: dict):
    """Translates a seed task (the prompt of --translate_seed_tasks) into made-up German, else continues the list
    in German."""
    if prompt.endswith("The translation:\n1. Instruction:"):
        number = int(prompt.split("topic number ")[1].split(".")[0])
        return (f" Erzähle mir etwas Nützliches über das Thema Nummer {number} und seine Geschichte.\n"
                f"1. Input:\n<noinput>\n1. Output:\n{GERMAN_OUTPUT}\n###"), "stop"
    rng = random.Random(prompt)
    text = "".join(task(n, german_instruction(rng), output=GERMAN_OUTPUT) for n in range(4, 8))
    return text[len("4. Instruction:"):], "stop"


@pytest.mark.slow  # German: lingua's Latin-script models (~9 s)
def test_translate_seed_tasks_once_and_reuse(openai_server, tmp_path, capsys):
    seeds = write_seed_file(tmp_path / "seeds.jsonl", [f"Tell me something useful about topic number {i}."
                                                       for i in range(8)], "An answer.")
    openai_server.responder = translating_teacher
    out = tmp_path / "de"
    run(openai_server, out, seeds, language="de", translate_seed_tasks=True, max_requests=1,
        price_per_1k_prompt_tokens=0.5, price_per_1k_completion_tokens=1.5)
    printed = capsys.readouterr().out
    assert "Translated 8 of 8 seed tasks into German (Deutsch)" in printed and "cost $" in printed
    translated = gi.load_seed_tasks(str(out / "seed_tasks.de.jsonl"))
    assert [t["instruction"] for t in translated][:2] == [
        "Erzähle mir etwas Nützliches über das Thema Nummer 0 und seine Geschichte.",
        "Erzähle mir etwas Nützliches über das Thema Nummer 1 und seine Geschichte."]
    generation = [b for b in openai_server.bodies() if not b["prompt"][0].endswith("The translation:\n1. Instruction:")]
    assert "Erzähle mir etwas Nützliches" in generation[0]["prompt"][0]
    assert "Tell me something useful" not in generation[0]["prompt"][0]
    # A later run in the same output_dir reuses the file: no translation request, no cost.
    requests_before = len(openai_server.requests)
    run(openai_server, out, seeds, language="de", translate_seed_tasks=True, max_requests=1)
    assert "translated by an earlier run; no cost" in capsys.readouterr().out
    assert all(not b["prompt"][0].endswith("The translation:\n1. Instruction:")
               for b in openai_server.bodies()[requests_before:])


# -- data_tools.py: stats, clean and contamination with --language ------------------------------------------------


def write_chinese_records(tmp_path) -> tuple[pathlib.Path, list[dict]]:
    """Six records: two one character apart, one with an English output, one in Japanese, one blacklisted."""
    base = "请用三句话解释为什么天空是蓝色的。"
    records = [{"instruction": base, "input": "", "output": CHINESE_OUTPUT},
               {"instruction": "请用三句话解释为什么天空是蓝色。", "input": "", "output": CHINESE_OUTPUT},  # 1 char off
               {"instruction": "列出下面这封邮件中提到的所有日期。", "input": "会议改到周五下午三点。",
                "output": "周五。"},
               {"instruction": "说出电动汽车相比燃油车的三个优点。", "input": "", "output": ENGLISH_OUTPUT},
               {"instruction": "秋についての短い詩を書いてください。", "input": "", "output": "秋の雨、静かな夜。"},
               {"instruction": "请画出一张中国地图。", "input": "", "output": CHINESE_OUTPUT}]
    path = tmp_path / "zh.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path, records


def test_data_tools_clean_and_contamination_in_chinese(tmp_path):
    from alpaca.data import tools as data_tools

    path, records = write_chinese_records(tmp_path)
    base = records[0]["instruction"]
    result = data_tools.clean(str(path), output=str(tmp_path / "clean.json"), language="zh", num_cpus=1)
    assert result["kept"] == 2 and result["dropped"] == {"similarity": 1, "language": 2, "blacklist": 1}
    kept = json.loads((tmp_path / "clean.json").read_text(encoding="utf-8"))
    assert [k["instruction"] for k in kept] == [base, records[2]["instruction"]]
    # The original's English-only rules would have dropped all of them (Chinese has no spaces: "too short").
    english = data_tools.clean(str(path), output=str(tmp_path / "clean_en.json"), num_cpus=1)
    assert english["dropped"] == {"length": 6}

    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text(json.dumps({"instruction": "请用三句话解释为什么天空是蓝色的？"}, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    found = data_tools.contamination(str(path), eval=str(eval_path), language="zh", num_cpus=1)
    assert [f["record_index"] for f in found] == [0, 1]
    assert data_tools.contamination(str(path), eval=str(eval_path), num_cpus=1) == []  # English tokens: none


@pytest.mark.slow  # stats imports spaCy and matplotlib
def test_data_tools_stats_reports_the_language_mix(tmp_path, capsys):
    from alpaca.data import tools as data_tools

    path, _ = write_chinese_records(tmp_path)
    stats = data_tools.stats(str(path), output_dir=str(tmp_path / "stats"), language="zh",
                             spacy_model="no_such_spacy_model_xyz", num_cpus=1)["zh"]
    assert stats["instruction_languages"] == {"zh": 5, "ja": 1}
    assert stats["near_duplicates"]["pairs"] == 1 and stats["generator_filter_drops"] == {"blacklist": 1}
    assert "| instruction languages | zh 83.3%, ja 16.7% |" in capsys.readouterr().out
