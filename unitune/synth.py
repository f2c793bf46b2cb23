"""Deterministic bilingual (English + Chinese) synthetic instruction data with chain-of-thought rationales.

Four task families, each asked in English and in Chinese: multi-step arithmetic, string manipulation,
list manipulation and (head, relation, tail) triple extraction. Every instruction record's output is a
short rationale and a last line ``Answer: X`` / ``答案：X`` (what :mod:`unitune.metrics` scores).

The same problem generators also write a plain-text pretraining corpus for the embedded tiny model. It
states the same skills in running prose (no ``Answer:`` line, no instruction layout), so a base model
trained on it knows the skills but not the instruction format: fine-tuning has to teach the format.

Held-out test problems never appear in the training records (no input string is shared) nor in the
pretraining corpus. Everything is generated here from small built-in word lists; nothing is downloaded.

    python -m unitune.synth --out data/synth            # train.jsonl + test.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

# ---------------------------------------------------------------- built-in word lists (invented or generic)
WORDS = """apple river stone lamp chair table bread cloud green house mouse horse light night water plant
train beach smile dream music paper pencil window garden forest island planet rocket silver orange yellow
purple winter summer spring autumn candle button ladder mirror pillow basket bottle butter carpet castle
cookie dragon engine farmer finger flower ginger hammer jacket kitten lemon magnet market monkey needle
noodle ocean parrot peanut pepper pocket rabbit saddle salad shadow sister spider sugar tiger tomato turtle
violin wallet zebra cat dog sun moon star tree book desk door fish bird milk rice salt ship road rain snow
wind fire gold king lake leaf ring rose sand sock song tea toy van web box cup hat key map net pen pig pot
bus bag bed bee cow egg fox ice jam owl ant arm ear eye leg lip toe art sky sea bell cake coat corn drum
duck farm frog goat hill kite lion nest pear rock seed shoe soup tent wolf yard bear boat fork glass grape
heart juice knife money party queen robot sheep shirt snake spoon storm sweet teeth thumb towel truck watch
whale wheel happy quick brave calm dark fast kind loud quiet small clean sharp bright cold warm soft blue
red pink gray black white brown field north south east west""".split()
ZH_WORDS = """春天 夏天 秋天 冬天 图书馆 火车站 电脑 手机 老师 学生 医院 公园 飞机场 自行车 西红柿 大熊猫 长颈鹿
向日葵 巧克力 冰淇淋 洗衣机 电视机 太阳 月亮 星星 天空 大海 森林 草原 沙漠 雪山 河流 小猫 小狗 苹果 香蕉 葡萄
西瓜 草莓 面包 牛奶 米饭 饺子 面条 朋友 家人 妈妈 爸爸 爷爷 奶奶 学校 教室 黑板 铅笔 橡皮 书包 作业 考试 音乐
电影 足球 篮球 游泳 跑步 唱歌 跳舞 画画 写字 读书 旅行 城市 乡村 街道 高楼 桥梁 公路 地铁 出租车 红绿灯 春夏秋冬
一帆风顺 万事如意 风和日丽 鸟语花香 山清水秀 五颜六色 七上八下 三心二意 人山人海 自言自语 小明 蛋糕 花园 窗户
桌子 椅子 杯子 雨伞 帽子 衣服 鞋子 眼睛 耳朵 嘴巴""".split()
FIRST = ("Elin Tomas Marek Sanna Orin Leda Kaspar Nadia Ivo Rhea Bram Talia Oskar Mira Felix Vera Anton Ilse "
         "Hugo Petra Emil Greta Lukas Nora Viktor Alma Jonas Freya Caspian Lina").split()
LAST = ("Varga Holm Castell Brandt Okafor Lindqvist Moreau Petrov Rask Tamsin Vale Quill Harrow Dunmore Ferris "
        "Galen Ivers Kessler Marlow Norcott Pell Rennick Sorel Thorne Ulric Wendt Yarrow Zell Bellamy Crane").split()
CITIES = ("Brennport Lowmere Kastavel Oriston Dunhallow Marisford Velmora Ashgrove Corvale Fernhold Glimmerton "
          "Hollin Kelton Larkspur Millbrook Northaven Oakridge Pinecrest Quarrytown Ravenshore Stonemere "
          "Thistledown Umberfield Valecrest Westmarch Yarrowdale Elmsworth Brackenby Duskvale Saltmarsh").split()
ORG_STEMS = "Brightline Northstar Bluepeak Silverleaf Greenfield Redwood Ironclad Clearwater Sunward Moonrise".split()
ORG_SUFFIX = "Labs Works Press Foods Motors Bank".split()
ZH_SURNAMES = list("王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧")
ZH_GIVEN = ("伟 芳 娜 敏 静 丽 强 磊 军 洋 勇 艳 杰 娟 涛 明 超 秀英 霞 平 刚 桂英 文 辉 玲 华 红 建国 晓东 雨萱 "
            "子涵 浩然 思远 欣怡 宇轩 梓萱 一鸣 佳琪 天佑 若溪").split()
ZH_CITIES = ("青川 云港 临溪 白石镇 枫林城 落霞市 金沙湾 望月镇 碧水城 南屿市 北岭镇 东篱村 桃源乡 雁回城 星河市 "
             "石桥镇 花溪城 竹海市 蓝湾镇 银杏村 松风镇 鹿鸣城 清泉市 梅岭村").split()
ZH_ORG_STEMS = "星辰 远航 青松 明光 天和 华新 长风 云帆 启明 百川".split()
ZH_ORG_SUFFIX = "科技 书局 食品 汽车 银行 出版社".split()

# (English sentence, English relation, Chinese sentence, Chinese relation, head kind, tail kind)
RELATIONS = [
    ("{h} was born in {t}.", "born in", "{h}出生于{t}。", "出生于", "person", "city"),
    ("{h} lives in {t}.", "lives in", "{h}住在{t}。", "住在", "person", "city"),
    ("{h} works for {t}.", "works for", "{h}就职于{t}。", "就职于", "person", "org"),
    ("{h} founded {t}.", "founded", "{h}创办了{t}。", "创办了", "person", "org"),
    ("{h} is located in {t}.", "located in", "{h}位于{t}。", "位于", "org", "city"),
    ("{h} studied under {t}.", "studied under", "{h}师从{t}。", "师从", "person", "person"),
    ("{h} knows {t}.", "knows", "{h}认识{t}。", "认识", "person", "person"),
]

# ---------------------------------------------------------------- problems
FAMILIES = ("arithmetic", "string", "list", "triple")
LANGS = ("en", "zh")


@dataclass(frozen=True)
class Problem:
    """One task instance, independent of language. `key` is the text a record puts in its input."""

    family: str
    kind: str
    key: str
    data: tuple
    answer: str


def _arithmetic(rng: random.Random, lang: str) -> Problem:
    kind = rng.choice(("+-", "-+", "++"))
    a, b, c = rng.randint(1, 49), rng.randint(1, 49), rng.randint(1, 49)
    if kind == "-+" and a < b:
        a, b = b, a
    if kind == "+-" and a + b < c:
        c = rng.randint(1, a + b)
    first = a + b if kind[0] == "+" else a - b
    result = first + c if kind[1] == "+" else first - c
    key = f"{a} {kind[0]} {b} {kind[1]} {c}"
    return Problem("arithmetic", kind, key, (a, kind[0], b, first, kind[1], c, result), str(result))


def _string(rng: random.Random, lang: str) -> Problem:
    if lang == "zh" and rng.random() < 0.4:
        word = rng.choice(ZH_WORDS)
        kind = rng.choice(("zh_reverse", "zh_count"))
        answer = word[::-1] if kind == "zh_reverse" else str(len(word))
        return Problem("string", kind, word, tuple(word), answer)
    word = rng.choice(WORDS)
    kind = rng.choice(("reverse", "count", "upper"))
    answer = {"reverse": word[::-1], "count": str(len(word)), "upper": word.upper()}[kind]
    return Problem("string", kind, word, tuple(word), answer)


def _list(rng: random.Random, lang: str) -> Problem:
    kind = rng.choice(("sort", "max", "sum"))
    nums = tuple(rng.sample(range(1, 31), rng.randint(3, 5)))  # distinct, so the order is strict
    answer = {"sort": ", ".join(map(str, sorted(nums))), "max": str(max(nums)), "sum": str(sum(nums))}[kind]
    return Problem("list", kind, ", ".join(map(str, nums)), nums, answer)


def _entity(rng: random.Random, kind: str, lang: str) -> str:
    if lang == "zh":
        if kind == "person":
            return rng.choice(ZH_SURNAMES) + rng.choice(ZH_GIVEN)
        if kind == "city":
            return rng.choice(ZH_CITIES)
        return rng.choice(ZH_ORG_STEMS) + rng.choice(ZH_ORG_SUFFIX)
    if kind == "person":
        return f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    if kind == "city":
        return rng.choice(CITIES)
    return f"{rng.choice(ORG_STEMS)} {rng.choice(ORG_SUFFIX)}"


def _triple(rng: random.Random, lang: str) -> Problem:
    en, en_rel, zh, zh_rel, hk, tk = rng.choice(RELATIONS)
    head = _entity(rng, hk, lang)
    tail = _entity(rng, tk, lang)
    while tail == head:
        tail = _entity(rng, tk, lang)
    sentence, rel = (zh, zh_rel) if lang == "zh" else (en, en_rel)
    sentence = sentence.format(h=head, t=tail)
    return Problem("triple", lang, sentence, (head, rel, tail), f"({head}, {rel}, {tail})")


GENERATORS: dict[str, Callable[[random.Random, str], Problem]] = {
    "arithmetic": _arithmetic, "string": _string, "list": _list, "triple": _triple}


# ---------------------------------------------------------------- instruction records
INSTRUCTIONS = {
    ("arithmetic", "en"): ["Calculate the value of the expression.", "Work out the result step by step.",
                           "Evaluate this arithmetic expression.", "What is the result of this calculation?"],
    ("arithmetic", "zh"): ["计算下面算式的值。", "请一步一步算出结果。", "求这个算式的结果。", "下面的算式等于多少？"],
    ("reverse", "en"): ["Reverse the letters of the word.", "Write the word backwards.",
                        "Spell this word in reverse order."],
    ("reverse", "zh"): ["把这个单词的字母倒过来写。", "将下面的单词反转。", "倒序写出这个单词。"],
    ("count", "en"): ["How many letters does the word have?", "Count the letters in the word."],
    ("count", "zh"): ["这个单词有几个字母？", "数一数这个单词的字母个数。"],
    ("upper", "en"): ["Convert the word to upper case.", "Write the word in capital letters."],
    ("upper", "zh"): ["把这个单词改写成大写字母。", "将下面的单词转换为大写。"],
    ("zh_reverse", "zh"): ["把这个词语的字顺序倒过来。", "将下面词语的字倒序排列。"],
    ("zh_count", "zh"): ["这个词语有几个字？", "数一数这个词语有多少个字。"],
    ("sort", "en"): ["Sort the numbers from smallest to largest.", "Arrange these numbers in ascending order."],
    ("sort", "zh"): ["把这些数从小到大排序。", "将下面的数字按升序排列。"],
    ("max", "en"): ["Find the largest number in the list.", "Which number in the list is the biggest?"],
    ("max", "zh"): ["找出这组数中最大的数。", "下面哪个数最大？"],
    ("sum", "en"): ["Add up all the numbers.", "What is the sum of these numbers?"],
    ("sum", "zh"): ["求这些数的和。", "把下面的数全部加起来。"],
    ("triple", "en"): ["Extract the (head, relation, tail) triple from the sentence.",
                       "Find the subject, relation and object in this sentence.",
                       "Identify the relation triple in the sentence."],
    ("triple", "zh"): ["从句子中抽取（主体，关系，客体）三元组。", "找出这句话中的实体关系三元组。",
                       "抽取下面句子里的关系三元组。"],
}


def _spell(word: str) -> str:
    return "-".join(word)


def _running_max(nums: tuple) -> list[int]:
    out, best = [], nums[0]
    for n in nums:
        best = max(best, n)
        out.append(best)
    return out


def _sum_steps(nums: tuple, sep: str) -> str:
    steps, total = [], nums[0]
    for n in nums[1:]:
        steps.append(f"{total} + {n} = {total + n}")
        total += n
    return sep.join(steps)


def rationale(p: Problem, lang: str) -> str:
    """The worked steps of a record's output (the part before the answer line)."""
    zh = lang == "zh"
    if p.family == "arithmetic":
        a, op1, b, first, op2, c, result = p.data
        if zh:
            return f"第一步：{a} {op1} {b} = {first}。\n第二步：{first} {op2} {c} = {result}。"
        return f"Step 1: {a} {op1} {b} = {first}.\nStep 2: {first} {op2} {c} = {result}."
    if p.family == "string":
        word = p.key
        if p.kind.startswith("zh_"):
            chars = "、".join(word)
            if p.kind == "zh_reverse":
                return f"逐字拆开：{chars}。\n倒过来是：{'、'.join(word[::-1])}。"
            return f"逐字拆开：{chars}。\n一共 {len(word)} 个字。"
        spelled = _spell(word)
        if p.kind == "reverse":
            return (f"字母依次是 {spelled}。\n倒过来是 {_spell(word[::-1])}。" if zh
                    else f"The letters are {spelled}.\nIn reverse: {_spell(word[::-1])}.")
        if p.kind == "count":
            return (f"字母依次是 {spelled}。\n一共 {len(word)} 个字母。" if zh
                    else f"The letters are {spelled}.\nThat is {len(word)} letters.")
        return (f"字母依次是 {spelled}。\n大写是 {_spell(word.upper())}。" if zh
                else f"The letters are {spelled}.\nIn capitals: {_spell(word.upper())}.")
    if p.family == "list":
        nums = p.data
        if p.kind == "sort":
            chain = " < ".join(map(str, sorted(nums)))
            return f"从小到大：{chain}。" if zh else f"From smallest to largest: {chain}."
        if p.kind == "max":
            running = _running_max(nums)
            return (f"逐个比较，当前最大值依次是 {'、'.join(map(str, running))}。" if zh
                    else f"Running maximum: {', '.join(map(str, running))}.")
        return f"依次相加：{_sum_steps(nums, '，')}。" if zh else f"Add them one by one: {_sum_steps(nums, ', ')}."
    head, rel, tail = p.data
    return f"主体：{head}\n关系：{rel}\n客体：{tail}" if zh else f"Head: {head}\nRelation: {rel}\nTail: {tail}"


def to_record(p: Problem, lang: str, rng: random.Random) -> dict:
    kind = "triple" if p.family == "triple" else p.kind
    instruction = rng.choice(INSTRUCTIONS[("arithmetic" if p.family == "arithmetic" else kind, lang)])
    marker = "答案：" if lang == "zh" else "Answer: "
    return {"instruction": instruction, "input": p.key, "output": f"{rationale(p, lang)}\n{marker}{p.answer}"}


def problems(rng: random.Random) -> Iterator[tuple[Problem, str]]:
    """An endless stream of (problem, language), the families and languages in equal shares."""
    while True:
        family, lang = rng.choice(FAMILIES), rng.choice(LANGS)
        yield GENERATORS[family](rng, lang), lang


def generate(seed: int = 0, n_train: int = 4000, n_test: int = 240) -> tuple[list[dict], list[dict], set[str]]:
    """Train and test records, and the test problems' input strings (kept out of train and pretraining).

    No test input string is a training input (for any task), so test records are truly held out.
    """
    rng = random.Random(seed)
    stream = problems(rng)
    test, test_keys = [], set()
    for p, lang in stream:  # one test record per problem input
        if len(test) >= n_test:
            break
        if p.key in test_keys:
            continue
        test_keys.add(p.key)
        test.append(to_record(p, lang, rng))
    train, seen = [], set()
    for p, lang in stream:
        if len(train) >= n_train:
            break
        record = to_record(p, lang, rng)
        pair = (record["instruction"], record["input"])
        if p.key in test_keys or pair in seen:
            continue
        seen.add(pair)
        train.append(record)
    return train, test, test_keys


# ---------------------------------------------------------------- pretraining prose
def prose(p: Problem, lang: str, rng: random.Random) -> str:
    """The problem worked out in running text: the task named first, then the same steps as the rationale,
    then the result in a sentence; never the instruction layout or an answer line."""
    zh = lang == "zh"
    pick = rng.choice
    if p.family == "arithmetic":
        a, op1, b, first, op2, c, result = p.data
        steps = f"{a} {op1} {b} = {first}，然后 {first} {op2} {c} = {result}" if zh else \
            f"{a} {op1} {b} = {first}, then {first} {op2} {c} = {result}"
        if zh:
            return pick([f"计算 {p.key}：先算 {steps}，所以结果是 {result}。",
                         f"算式 {p.key} 这样算：{steps}，{p.key} 等于 {result}。"])
        return pick([f"To work out {p.key}, first {steps}, so it comes to {result}.",
                     f"Calculating {p.key}: {steps}. The result is {result}."])
    if p.family == "string":
        word = p.key
        if p.kind.startswith("zh_"):
            chars, rchars = "、".join(word), "、".join(word[::-1])
            if p.kind == "zh_reverse":
                return pick([f"把“{word}”倒过来：逐字拆开是{chars}，倒过来是{rchars}，也就是“{word[::-1]}”。",
                             f"“{word}”逐字拆开是{chars}，倒序是{rchars}，写成“{word[::-1]}”。"])
            return pick([f"数一数“{word}”有几个字：逐字拆开是{chars}，共有 {len(word)} 个字。",
                         f"“{word}”逐字拆开是{chars}，一共 {len(word)} 个字。"])
        spelled, back, up = _spell(word), _spell(word[::-1]), _spell(word.upper())
        if p.kind == "reverse":
            return (pick([f"把单词 {word} 倒过来写：字母是 {spelled}，倒过来是 {back}，写作 {word[::-1]}。",
                          f"单词 {word} 的拼写是 {spelled}，反转后是 {back}，也就是 {word[::-1]}。"]) if zh else
                    pick([f"Reversing the word {word}: it is spelled {spelled}, backwards {back}, "
                          f"written {word[::-1]}.",
                          f"Written backwards, the word {word} ({spelled}) is {back}, so {word[::-1]}.",
                          f"The word {word} is spelled {spelled}; in reverse order that is {back}, so {word[::-1]}."]))
        if p.kind == "count":
            return (pick([f"数一数单词 {word} 的字母：{spelled}，共有 {len(word)} 个字母。",
                          f"单词 {word} 的拼写是 {spelled}，所以有 {len(word)} 个字母。"]) if zh else
                    pick([f"Counting the letters of {word}: {spelled}, which makes {len(word)} letters.",
                          f"How many letters does {word} have? It is spelled {spelled}, so {len(word)} letters.",
                          f"The word {word} is spelled {spelled}, so it has {len(word)} letters."]))
        return (pick([f"把单词 {word} 写成大写：字母是 {spelled}，大写是 {up}，写作 {word.upper()}。",
                      f"单词 {word} 的拼写是 {spelled}，转成大写字母是 {up}，即 {word.upper()}。"]) if zh else
                pick([f"In upper case, the word {word} ({spelled}) becomes {up}, written {word.upper()}.",
                      f"Written in capital letters, the word {word} ({spelled}) is {up}, so {word.upper()}.",
                      f"The word {word} is spelled {spelled}; in capital letters it is {up}, so {word.upper()}."]))
    if p.family == "list":
        nums = p.data
        listed = ", ".join(map(str, nums))
        ordered = ", ".join(map(str, sorted(nums)))
        if p.kind == "sort":
            chain = " < ".join(map(str, sorted(nums)))
            return (pick([f"把 {listed} 从小到大排序：{chain}，排好是 {ordered}。",
                          f"{listed} 按升序排列是 {chain}，也就是 {ordered}。"]) if zh else
                    pick([f"Sorting {listed} from smallest to largest: {chain}, which gives {ordered}.",
                          f"In ascending order, {listed} becomes {chain}, that is {ordered}."]))
        if p.kind == "max":
            running = _running_max(nums)
            zh_run, en_run = "、".join(map(str, running)), ", ".join(map(str, running))
            return (pick([f"找出 {listed} 中最大的数：当前最大值依次是 {zh_run}，最大的是 {max(nums)}。",
                          f"在 {listed} 里逐个比较，最大值依次是 {zh_run}，所以最大的是 {max(nums)}。"])
                    if zh else
                    pick([f"To find the largest of {listed}, the running maximum is {en_run}, "
                          f"so the biggest is {max(nums)}.",
                          f"Going through {listed}, the running maximum is {en_run}; "
                          f"the largest number is {max(nums)}."]))
        return (pick([f"把 {listed} 加起来：{_sum_steps(nums, '，')}，和是 {sum(nums)}。",
                      f"{listed} 的和：依次相加 {_sum_steps(nums, '，')}，总共是 {sum(nums)}。"]) if zh else
                pick([f"Adding up {listed}: {_sum_steps(nums, ', ')}, so the sum is {sum(nums)}.",
                      f"The sum of {listed}: {_sum_steps(nums, ', ')}, a total of {sum(nums)}."]))
    head, rel, tail = p.data
    if zh:
        return pick([f"{p.key}这句话里，主语是{head}，关系是{rel}，宾语是{tail}。",
                     f"从“{p.key}”中抽取三元组：主体是{head}，关系是{rel}，客体是{tail}，即{p.answer}。"])
    return pick([f"{p.key} In this sentence the subject is {head}, the relation is {rel} and the object is {tail}.",
                 f"Extracting the triple from \"{p.key}\": the head is {head}, the relation is {rel}, "
                 f"and the tail is {tail}, so the triple is {p.answer}."])


_EN_FOOD = "apples bread rice noodles soup cake cheese grapes pears fish".split()
_ZH_FOOD = "苹果 面包 米饭 面条 饺子 蛋糕 西瓜 葡萄 鸡蛋 豆腐".split()
_EN_ANIMALS = "cat dog bird horse rabbit fox owl duck goat tiger".split()
_ZH_ANIMALS = "猫 狗 鸟 马 兔子 狐狸 熊猫 鸭子 山羊 老虎".split()
_EN_WEATHER = "sunny rainy windy cold warm cloudy".split()
_ZH_WEATHER = "晴朗 多雨 寒冷 暖和 凉快 闷热".split()
_EN_PLACES = "garden park river school market library forest beach".split()
_ZH_PLACES = "花园 公园 河边 学校 市场 图书馆 森林 海边".split()


def sentence(rng: random.Random, lang: str) -> str:
    """One generic sentence, so the base also knows ordinary prose."""
    if lang == "zh":
        name = rng.choice(ZH_SURNAMES) + rng.choice(ZH_GIVEN)
        return rng.choice([
            f"{name}喜欢吃{rng.choice(_ZH_FOOD)}。",
            f"今天{rng.choice(ZH_CITIES)}的天气很{rng.choice(_ZH_WEATHER)}。",
            f"{name}每天去{rng.choice(_ZH_PLACES)}散步。",
            f"一只{rng.choice(_ZH_ANIMALS)}在{rng.choice(_ZH_PLACES)}里睡觉。",
            f"{name}有 {rng.randint(2, 9)} 本书。", f"{name}和朋友一起去了{rng.choice(ZH_CITIES)}。",
            f"{rng.choice(ZH_WORDS)}和{rng.choice(ZH_WORDS)}都很常见。",
        ])
    name = rng.choice(FIRST)
    return rng.choice([
        f"{name} likes {rng.choice(_EN_FOOD)}.", f"It is {rng.choice(_EN_WEATHER)} in {rng.choice(CITIES)} today.",
        f"{name} walks to the {rng.choice(_EN_PLACES)} every day.",
        f"A {rng.choice(_EN_ANIMALS)} is sleeping in the {rng.choice(_EN_PLACES)}.",
        f"{name} has {rng.randint(2, 9)} books.", f"{name} and a friend went to {rng.choice(CITIES)}.",
        f"The {rng.choice(WORDS)} is next to the {rng.choice(WORDS)}.",
    ])


def spelling(rng: random.Random, lang: str) -> str:
    """A spelling fact, for every word (test words included): the base must know how words are spelled."""
    word = rng.choice(WORDS)
    return f"{word} 的拼写：{_spell(word)}。" if lang == "zh" else f"{word} is spelled {_spell(word)}."


def pretrain_documents(seed: int, n_docs: int, exclude: set[str] | frozenset = frozenset()) -> Iterator[str]:
    """Plain-text documents of 4-10 items (worked problems in prose, spelling facts, generic sentences).

    Problems whose input is in `exclude` (the held-out test inputs) are skipped.
    """
    rng = random.Random(seed * 7919 + 1)
    for _ in range(n_docs):
        items = []
        doc_lang = rng.choice(LANGS)
        for _ in range(rng.randint(4, 10)):
            lang = doc_lang if rng.random() < 0.8 else rng.choice(LANGS)
            roll = rng.random()
            if roll < 0.08:
                items.append(sentence(rng, lang))
            elif roll < 0.18:
                items.append(spelling(rng, lang))
            else:
                family = rng.choice(FAMILIES)
                p = GENERATORS[family](rng, lang)
                while p.key in exclude:
                    p = GENERATORS[family](rng, lang)
                items.append(prose(p, lang, rng))
        yield ("\n" if rng.random() < 0.5 else " ").join(items)


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write(out: str | Path, seed: int = 0, n_train: int = 4000, n_test: int = 240) -> tuple[list, list, set]:
    """Write out/train.jsonl and out/test.jsonl; returns what :func:`generate` returns."""
    train, test, keys = generate(seed, n_train, n_test)
    out = Path(out)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "test.jsonl", test)
    log.info("wrote %d train and %d test records to %s", len(train), len(test), out)
    return train, test, keys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m unitune.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/synth", help="output folder (default: data/synth)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--train", type=int, default=4000, help="training records (default: 4000)")
    parser.add_argument("--test", type=int, default=240, help="held-out test records (default: 240)")
    parser.add_argument("--pretrain", metavar="FILE", help="also write this many --pretrain_docs of plain text here")
    parser.add_argument("--pretrain_docs", type=int, default=1000, help="documents in --pretrain (default: 1000)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    train, test, keys = write(args.out, args.seed, args.train, args.test)
    if args.pretrain:
        path = Path(args.pretrain)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for doc in pretrain_documents(args.seed, args.pretrain_docs, keys):
                f.write(doc + "\n\n")
    print(f"{len(train)} train, {len(test)} test records in {args.out}")


if __name__ == "__main__":
    main()
