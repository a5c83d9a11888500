#!/usr/bin/env python3
"""Parity of the C++ tokenizer (through `lightrl tokenize`) with HuggingFace `tokenizers`.

Trains two byte-level BPE tokenizers on a generated corpus -- one with the GPT-2
ByteLevel pre-tokenizer, one with Sequence[Split(GPT-4 regex), ByteLevel(use_regex=False)]
-- derives variants of them by editing tokenizer.json (prefix space, "a b" merges,
ignore_merges, the Qwen and \\p{N}+ digit rules, literal Split steps with every
behaviour), and checks on fixed edge cases plus random unicode text that the C++ ids
equal HF's, that decode(encode(x)) == x, and that decoding random id lists (cut UTF-8
included) equals HF's decode. It also checks the generated Unicode tables against the
regex engine `tokenizers` runs, codepoint by codepoint.

Run: LIGHTRL_BIN=build/rl/lightrl .venv/bin/python tests/python/test_tokenizer_parity.py
Env: LIGHTRL_PARITY_SEED (default 20250611), LIGHTRL_PARITY_TEXTS (random texts per
variant, default 300). Exits non-zero on the first kind of mismatch, printing it.
"""

import copy
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def gpt4_regex(digits):
    return (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|" + digits +
            r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "</s>"]
REPO_ROOT = Path(__file__).resolve().parents[2]

# --- text generation ---------------------------------------------------------------------

WORDS = ("the of and to in is that for it with as was on be by this are from at or an "
         "have not but which they you all can had her one there were we their been has "
         "model token reward policy gradient sample rollout learner batch kernel").split()
FRAGMENTS = [
    "café", "naïve", "Ærøskøbing", "straße", "İstanbul", "ĳssel", "Ωμέγα", "привет мир",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ", "東京都", "你好，世界！",
    "日本語のテキスト", "안녕하세요", "𠜎𠜱𠝹", "🙂", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "e\u0301",
    "a\u0308\u0323", "Z\u0351\u0352\u0357\u0358", "١٢٣٤٥", "²³", "Ⅻ", "１２３", "৩৪", "½",
    "def f(x):\n    return x ** 2\n", "if (a && b) { c++; }", "<div class=\"x\">", "$ ls -la",
    "https://example.com/a?b=c", "x_1 = y[i+1] - 3.14e-5", "#include <vector>", "```py",
    "'s", "'S", "'ll", "'LL", "'re", "'Ve", "'ſ", "'t", "'D", "'M", "’s", "don't", "I'M",
    "<|im_", "<think>", "</think>", "<mask>", "<|fim|>", "</s>x", "<|endoftext|>",
    "<|im_start|>", "<|im_end|>", "!!", "...", "--", "—", "«»", "¿?", "\u200b", "\ufeff",
    # Long s folds to 's' under (?i): "'ſ" is a contraction, "ſtate" a word to learn merges.
    "ſtate", "ſhall", "'ſtate", "x'ſhall",
    # "qz" is a single_word added token and "zx" a plain one: in "aqzx" the discarded "qz"
    # match hides the "zx" that starts inside it.
    "aqzx", " qz ", "qz", "qzx", "éqz", "qz_",
]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", "\r", " \n ", "\u00a0", "\u2003",
          "\u3000", "\u0085", "\u2028", "\x0b", "\x0c", "\x1c", "\x1f", " \t\n"]
EDGE_CASES = [
    "", " ", "  ", "\n", "a", "\t\t", "hello   ", "   hello", "hello\n\n\nworld", "x\r\n\r\ny",
    "1234567", "١٢٣٤٥٦٧", "don't DON'T 's'S'ſ 'll'LL", "  \n  x", "x  \n", " \u00a0x",
    "\u3000\u3000a",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", "<|im_start|><|im_end|>",
    "a <mask> b", "a<mask>b", "x  <|fim|>  y", "<think>\nreasoning\n</think>", "</s></s>", "<|im_",
    "naïve café — “quotes” and ‘apostrophes’", "e\u0301\u0301\u0301", "👨‍👩‍👧‍👦🏳️‍🌈",
    "\x1c\x1d\x1e\x1f", "a\x85b\u2028c\u2029d", "word\u200bword", "٣ ٤ ٥", "ab12cd345ef6789",
    "Ⅻ²³½", "    def f():\n\t\treturn 1\n", "!!!\n\n\n???", " ?!\r\n", "'", "''", "'s's",
    "\ufeffBOM", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛", "\U0001F600" * 5, "x" * 300, " " * 50,
    "\n" * 20 + "x",
]


def random_codepoint(rng):
    while True:
        cp = rng.randrange(0x20, 0x3000) if rng.random() < 0.7 else rng.randrange(0x3000, 0x110000)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def random_text(rng, max_parts=40):
    parts = []
    for _ in range(rng.randint(1, max_parts)):
        r = rng.random()
        if r < 0.35:
            word = rng.choice(WORDS)
            parts.append(word.capitalize() if rng.random() < 0.2 else word)
        elif r < 0.6:
            parts.append(rng.choice(FRAGMENTS))
        elif r < 0.8:
            parts.append(rng.choice(SPACES))
        elif r < 0.88:
            parts.append(str(rng.randrange(0, 10 ** rng.randint(1, 9))))
        elif r < 0.94:
            parts.append("".join(random_codepoint(rng) for _ in range(rng.randint(1, 4))))
        else:
            parts.append(rng.choice(SPECIAL_TOKENS))
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


def corpus(rng, lines):
    return [random_text(rng, max_parts=60) for _ in range(lines)]


# --- tokenizers under test ----------------------------------------------------------------

def train(pre_tokenizer, lines, vocab_size):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(lines, trainer)
    tokenizer.add_tokens(["<think>", "</think>", AddedToken("qz", single_word=True), "zx"])
    tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True),
                                  AddedToken("<|fim|>", lstrip=True, rstrip=True, special=True)])
    return json.loads(tokenizer.to_str())


def split(pattern, behavior="Isolated", invert=False):
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": behavior, "invert": invert}


def literal(text, behavior, invert=False):
    return {"type": "Split", "pattern": {"String": text}, "behavior": behavior, "invert": invert}


LOSSLESS_VARIANTS = {"gpt2_bytelevel", "gpt4_split", "gpt2_regex_as_split", "qwen_single_digits"}
# Added tokens trained with lstrip/rstrip: they swallow the white space around them.
STRIPPING_TOKENS = ["<mask>", "<|fim|>"]

BYTE_LEVEL_NO_REGEX = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                       "use_regex": False}


def variants(gpt2_json, gpt4_json):
    out = {"gpt2_bytelevel": gpt2_json, "gpt4_split": gpt4_json}

    v = copy.deepcopy(gpt2_json)
    v["pre_tokenizer"]["add_prefix_space"] = True
    v["model"]["ignore_merges"] = True
    assert all(" " not in a and " " not in b for a, b in v["model"]["merges"])
    v["model"]["merges"] = [f"{a} {b}" for a, b in v["model"]["merges"]]
    out["gpt2_prefix_space_string_merges_ignore_merges"] = v

    v = copy.deepcopy(gpt2_json)
    v["pre_tokenizer"] = {"type": "Sequence",
                          "pretokenizers": [split(GPT2_REGEX), BYTE_LEVEL_NO_REGEX]}
    out["gpt2_regex_as_split"] = v

    v = copy.deepcopy(gpt4_json)
    v["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = gpt4_regex(r"\p{N}")
    out["qwen_single_digits"] = v

    v = copy.deepcopy(gpt4_json)
    v["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        literal("\n", "MergedWithNext"), literal("  ", "Contiguous"), literal(",", "Removed"),
        literal("e", "MergedWithPrevious", invert=True), split(gpt4_regex(r"\p{N}+")),
        BYTE_LEVEL_NO_REGEX]}
    out["literal_splits_unbounded_digits"] = v

    v = copy.deepcopy(gpt2_json)
    v["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        literal(" ", "Removed", invert=True), literal("a", "MergedWithNext", invert=True),
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
    out["inverted_splits_prefix_space"] = v
    return out


# --- checks ---------------------------------------------------------------------------------

def run_cli(binary, tokenizer_path, lines, workdir):
    inp = Path(workdir) / "in.jsonl"
    out = Path(workdir) / "out.jsonl"
    inp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines),
                   encoding="utf-8")
    if out.exists():
        out.unlink()
    proc = subprocess.run([binary, "tokenize", "--tokenizer", str(tokenizer_path), "--input",
                           str(inp), "--output", str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"FAIL: lightrl tokenize exited {proc.returncode}: {proc.stderr.strip()}")
    # split("\n"), not splitlines(): U+2028, U+0085 and \x1c may stand raw in JSON strings.
    return [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def check_variant(name, tokenizer_json, texts, binary, workdir, rng):
    path = Path(workdir) / f"{name}.json"
    path.write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
    hf = Tokenizer.from_file(str(path))
    expected = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    vocab_size = max(hf.get_vocab(with_added_tokens=True).values()) + 1
    id_lists = [[rng.randrange(vocab_size) for _ in range(rng.randint(1, 12))] for _ in range(200)]
    # Cut multi-byte characters: single byte tokens of a UTF-8 text, in random slices.
    for text in texts[:100]:
        ids = hf.encode(text, add_special_tokens=False).ids
        if ids:
            a = rng.randrange(len(ids))
            id_lists.append(ids[a:a + rng.randint(1, 5)])
    lines = [{"text": t} for t in texts] + [{"ids": ids} for ids in id_lists]
    results = run_cli(binary, path, lines, workdir)
    if len(results) != len(lines):
        sys.exit(f"FAIL [{name}]: {len(lines)} input lines, {len(results)} output lines")

    # Stripping added tokens, a prefix space and Removed splits lose text by design; there
    # decode(encode(x)) is compared with HF's instead of with x.
    lossless = name in LOSSLESS_VARIANTS
    counts = {"ids": 0, "round trip": 0, "decode": 0}

    def report(kind, message):
        counts[kind] += 1
        if sum(counts.values()) == 1:
            print(f"FAIL [{name}] {message}")

    for text, want, got in zip(texts, expected, results):
        if got["ids"] != want:
            i = first_difference(got["ids"], want)
            report("ids", f"text {text!r}: ids differ at index {i}\n  tokenizers: {want}\n"
                          f"  lightrl:    {got['ids']}\n  tokenizers' tokens around it: "
                          f"{[hf.id_to_token(t) for t in want[max(0, i - 2):i + 3]]}")
        elif lossless and not any(t in text for t in STRIPPING_TOKENS):
            if got["decoded"] != text:
                report("round trip", f"text {text!r}: decode(encode(x)) = {got['decoded']!r}")
        elif got["decoded"] != hf.decode(want, skip_special_tokens=False):
            report("decode", f"text {text!r}: decoded {got['decoded']!r}, tokenizers "
                             f"{hf.decode(want, skip_special_tokens=False)!r}")
    for ids, got in zip(id_lists, results[len(texts):]):
        want = hf.decode(ids, skip_special_tokens=False)
        if got["decoded"] != want:
            report("decode", f"decode({ids})\n  tokenizers: {want!r}\n  lightrl:    "
                             f"{got['decoded']!r}")
    failures = sum(counts.values())
    total_ids = sum(len(e) for e in expected)
    print(f"{'FAIL' if failures else 'ok  '} {name}: {len(texts)} texts ({total_ids} ids), "
          f"{len(id_lists)} id lists; mismatches: " +
          ", ".join(f"{k} {v}" for k, v in counts.items()))
    return failures


def check_cli_errors(binary, tokenizer_path, workdir):
    inp = Path(workdir) / "bad.jsonl"
    out = Path(workdir) / "bad_out.jsonl"
    inp.write_text('{"text": "fine"}\n{"text": "broken\n', encoding="utf-8")
    proc = subprocess.run([binary, "tokenize", "--tokenizer", str(tokenizer_path), "--input",
                           str(inp), "--output", str(out)], capture_output=True, text=True)
    failures = 0
    if proc.returncode != 1 or f"{inp}:2" not in proc.stderr or out.exists():
        print(f"FAIL cli: malformed line 2 gave rc {proc.returncode}, stderr {proc.stderr!r}, "
              f"output written: {out.exists()}")
        failures += 1
    else:
        print(f"ok   cli: malformed JSONL -> rc 1, {proc.stderr.strip()!r}, no output file")
    return failures


def onig_sets(codepoints_text, all_codepoints):
    result = {}
    for name, pattern in (("Letter", r"\p{L}"), ("Number", r"\p{N}"), ("WhiteSpace", r"\s")):
        pieces = pre_tokenizers.Split(Regex(pattern), "removed").pre_tokenize_str(codepoints_text)
        outside = {ord(ch) for piece, _ in pieces for ch in piece}
        result[name] = all_codepoints - outside
    return result


def check_unicode_tables():
    source = (REPO_ROOT / "policy" / "unicode_tables.cc").read_text(encoding="utf-8")
    all_codepoints = {cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF}
    text = "".join(chr(cp) for cp in sorted(all_codepoints))
    failures = 0
    for name, onig in onig_sets(text, all_codepoints).items():
        body = source.split(f"k{name}Ranges[] = {{")[1].split("};")[0]
        table = set()
        for first, last in re.findall(r"\{0x([0-9A-F]+), 0x([0-9A-F]+)\}", body):
            table.update(range(int(first, 16), int(last, 16) + 1))
        diff = sorted(table ^ onig)
        if diff:
            failures += 1
            print(f"FAIL unicode tables: {name} differs from tokenizers' regex engine on "
                  f"{len(diff)} codepoints, e.g. {[hex(c) for c in diff[:10]]}; regenerate "
                  f"with scripts/gen_unicode_tables.py for the Unicode version it uses")
        else:
            print(f"ok   unicode tables: {name} agrees with tokenizers on all codepoints")
    return failures


def main():
    binary = os.environ.get("LIGHTRL_BIN")
    if not binary or not Path(binary).exists():
        sys.exit("LIGHTRL_BIN must name the lightrl binary")
    seed = int(os.environ.get("LIGHTRL_PARITY_SEED", "20250611"))
    num_texts = int(os.environ.get("LIGHTRL_PARITY_TEXTS", "300"))
    print(f"seed {seed} (set LIGHTRL_PARITY_SEED to change), {num_texts} random texts per variant")
    rng = random.Random(seed)

    failures = check_unicode_tables()
    lines = corpus(rng, 3000)
    gpt2_json = train(pre_tokenizers.ByteLevel(add_prefix_space=False), lines, 3000)
    gpt4_json = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(gpt4_regex(r"\p{N}{1,3}")), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), lines, 3000)
    texts = EDGE_CASES + [random_text(rng) for _ in range(num_texts)]
    with tempfile.TemporaryDirectory(prefix="tokenizer_parity_") as workdir:
        for name, tokenizer_json in variants(gpt2_json, gpt4_json).items():
            failures += check_variant(name, tokenizer_json, texts, binary, workdir, rng)
        failures += check_cli_errors(binary, Path(workdir) / "gpt2_bytelevel.json", workdir)
    if failures:
        print(f"{failures} failures (seed {seed})")
        sys.exit(1)
    print("all tokenizer parity checks passed")


if __name__ == "__main__":
    main()
