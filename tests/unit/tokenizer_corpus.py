"""A deterministic, varied text corpus for tokenizer parity tests and the benchmark."""

from __future__ import annotations

import random
import unicodedata

PROSE = [
    "The quick brown fox jumps over the lazy dog. It's 5 o'clock somewhere, isn't it?",
    "I'm sure they'll say we'd've done it; YOU'RE WRONG, he'S RIGHT, She'Ll Know, I'D, it'LL.",
    "Don't, can't, won't; DON'T, CAN'T; 'Tis the season. ' s ' t 'sup 're 've 'm 'll 'd",
    "Mr. O'Neil paid $1,234.56 (approx. €1.1k) on 2024-03-15T12:34:56Z — 50% off!",
    '"Quoted," she said… and then—nothing.  Two  spaces.   Three.\tTab.\r\nCRLF line.',
    "Ünïcödé naïve café résumé coöperate façade Ångström Straße ĳ ﬁ ﬂ ǅ ẞ",
    "e\u0301 a\u0308 o\u0302 \u1100\u1161\u11a8 (combining sequences, NFC composes them)",
]
CODE = [
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n"
    "    return fib(n - 1) + fib(n - 2)\n",
    '#include <stdio.h>\nint main(void) {\n\tprintf("%d\\n", 42);\n\treturn 0;\n}\n',
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n"
    '    println!("{:?}", v);\n}',
    "const f = async (a, b) => { await fetch(`/api/${a}?b=${b}`); return a ?? b; };\n",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    '<html><body><div class="x">&nbsp;&lt;tag&gt;</div></body></html>\n',
    'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hi")\n}\n',
    "    \n\n\t\t  \r\n  if (x) {{ y++; }}   \n\n\n",
]
CJK = [
    "我们今天去公园散步，天气非常好。人工智能正在改变世界。",
    "日本語のテキストです。ひらがな、カタカナ、漢字が混ざっています。東京タワー",
    "한국어 텍스트입니다. 안녕하세요, 만나서 반갑습니다!",
    "混合 text 中英文 mixed 123 数字，标点。「引号」『双引号』",
]
SCRIPTS = [
    "مرحبا بالعالم، هذا نص عربي مع أرقام ١٢٣٤٥ و 678.",
    "नमस्ते दुनिया, यह हिंदी पाठ है। संख्या १२३ और 456",
    "Привет, мир! Ёлка и ёжик. Ελληνικά γράμματα αβγ. עברית שלום",
    "ภาษาไทย ไม่มีช่องว่าง ระหว่างคำ ทดสอบ",
    "Tiếng Việt có dấu: Đường phố Hà Nội ồn ào.",
]
EMOJI = [
    "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, 🇺🇸🇯🇵 flags, ❤️‍🔥, 1️⃣ keycap",
    "🎉🎉🎉 party!!! 😀😃😄😁 ✨ ∑∫∂√∞ ≠ ≤ ≥ → ← ⇒ ♠♣♥♦ ©®™",
]
NUMBERS = [
    "0 1 12 123 1234 12345 123456 1234567 3.14159265358979 -0.5e-10 0x1F 1_000_000",
    "١٢٣ ४५६ ௧௨௩ ⅫⅧ ½ ¾ ² ³ ① ② 𝟙𝟚𝟛 ９８７",
]
WHITESPACE = [
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t",
    " \t \n",
    "   x",
    "x   ",
    "x \n y",
    "a\r\nb\rc\nd",
    "\u00a0\u2003\u3000 mixed\u2009spaces\u202f",
    " \u000b\u000c\u0085\u2028\u2029 ",
    "\u001c\u001d\u001e\u001f separators",
    "word\n\n   \n  word",
    "    \n    ",
    "\t\t\tx",
]
SPECIAL = [
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "text<|endoftext|>more<|im_end|><|im_end|> <think>\nreasoning\n</think>\n\nanswer",
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call><|fim_prefix|>a<|fim_suffix|>',
    "almost <|im_start but not <|im_end|| nor <think >",
]
EDGE = [
    "",
    "a",
    "'",
    "''",
    "'s",
    "'S",
    "'ſ",
    "'ſt",
    "x'LL",
    "\x00\x01\x7f",
    "\ufeffBOM",
    "\ufffd replacement",
    "\U0010ffff\U000e0001 tags",
    "\u200b\u200c\u200d zero width",
]

CATEGORIES: dict[str, list[str]] = {
    "prose": PROSE,
    "code": CODE,
    "cjk": CJK,
    "scripts": SCRIPTS,
    "emoji": EMOJI,
    "numbers": NUMBERS,
    "whitespace": WHITESPACE,
    "special": SPECIAL,
    "edge": EDGE,
}
FRAGMENTS = [s for group in CATEGORIES.values() for s in group]


def random_char(rng: random.Random) -> str:
    """An assigned code point (in this Python's Unicode), mostly from common ranges."""
    while True:
        r = rng.random()
        if r < 0.5:
            cp = rng.randrange(0x20, 0x250)
        elif r < 0.8:
            cp = rng.randrange(0x250, 0x3400)
        elif r < 0.9:
            cp = rng.randrange(0x3400, 0x10000)
        else:
            cp = rng.randrange(0x10000, 0x110000)
        ch = chr(cp)
        if 0xD800 <= cp <= 0xDFFF or unicodedata.category(ch) == "Cn":
            continue
        return ch


def random_text(rng: random.Random, n: int) -> str:
    """Fragments, random characters, whitespace runs and digits mixed together."""
    parts = []
    while sum(map(len, parts)) < n:
        r = rng.random()
        if r < 0.4:
            frag = rng.choice(FRAGMENTS)
            a = rng.randrange(len(frag) + 1)
            parts.append(frag[a : a + rng.randrange(1, 60)])
        elif r < 0.6:
            parts.append("".join(random_char(rng) for _ in range(rng.randrange(1, 8))))
        elif r < 0.75:
            parts.append(
                "".join(rng.choice(" \t\n\r\u00a0\u3000") for _ in range(rng.randrange(1, 6)))
            )
        elif r < 0.85:
            parts.append(str(rng.randrange(10 ** rng.randrange(1, 12))))
        else:
            parts.append(
                rng.choice(
                    [
                        "'s",
                        "'T",
                        "'Re",
                        "'VE",
                        "'m",
                        "'Ll",
                        "'D",
                        "'",
                        "<|im_end|>",
                        "<think>",
                        "</tool_call>",
                        "http://x.y/z?q=1&r=2",
                        "__init__",
                    ]
                )
            )
    return "".join(parts)


def corpus(seed: int = 0, n_random: int = 1200, random_len: int = 600) -> list[str]:
    """Every fixed string, some long ones, and ``n_random`` random mixtures."""
    rng = random.Random(seed)
    out = list(FRAGMENTS)
    out += [s * 50 for s in PROSE[:2] + CODE[:2] + CJK[:2]]
    out += [" " * 1000, "\n" * 500 + "x", "a" * 5000, "1" * 3000, "🎉" * 400, " \t" * 300 + "y"]
    out += [random_text(rng, rng.randrange(1, random_len)) for _ in range(n_random)]
    return out


def benchmark_text(megabytes: float, seed: int = 1) -> str:
    """Mixed text of about ``megabytes`` MB of UTF-8 for the encode benchmark."""
    rng = random.Random(seed)
    blocks = [*PROSE, *CODE, *CJK, *SCRIPTS, *EMOJI, *NUMBERS]
    parts: list[str] = []
    size = 0
    target = int(megabytes * 1e6)
    while size < target:
        block = rng.choice(blocks) if rng.random() < 0.8 else random_text(rng, 300)
        parts.append(block)
        size += len(block.encode("utf-8"))
    return "\n".join(parts)
