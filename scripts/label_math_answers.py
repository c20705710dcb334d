#!/usr/bin/env python3
"""One-off labeller for testdata/math-answers: math-verify's verdict on each pair.

NOT part of the product: run it from a virtual environment OUTSIDE the repository, e.g.

    python3 -m venv /work/venvs/mathverify
    /work/venvs/mathverify/bin/pip install 'math-verify[antlr4_13_2]'   # 0.9.0 used (extra unused there)
    /work/venvs/mathverify/bin/python scripts/label_math_answers.py \
        testdata/math-answers/pairs.jsonl testdata/math-answers/labelled.jsonl

Input: JSON lines with `id`, `gold`, `response`, `category`. Output: the same records plus
`label` (bool, math-verify's verdict), `extracted` (the answer text taken from the response,
or null) and `gold_answer` (the gold text given to math-verify), in input order.

Extraction follows the Rust verifier's conventions (rewards/src/math.rs), so that only the
*comparison* is cross-checked:
  * response: contents of the last `\\boxed{...}` / `\\fbox{...}` (balanced braces; `\\boxed X$`
    form too), else the rest of the line after the last `####`, else nothing;
  * gold: the rest of the line after the last `####` (GSM8K), else the last `\\boxed{}`, else
    the whole gold string.
Then exactly:
    label = math_verify.verify(math_verify.parse("$" + gold_answer + "$"),
                               math_verify.parse("$" + extracted + "$"))
with math-verify's default parse/verify settings (gold first). A response with nothing to
extract is parsed as the empty string, which math-verify labels False. Labels are never
edited by hand.
"""
import json
import sys

from math_verify import parse, verify


def last_boxed(text):
    pos, tag = text.rfind("\\boxed"), "\\boxed"
    if pos < 0:
        pos, tag = text.rfind("\\fbox"), "\\fbox"
        if pos < 0:
            return None
    rest = text[pos + len(tag):]
    if rest.startswith(" "):
        r = rest[1:]
        end = r.find("$")
        v = (r if end < 0 else r[:end]).strip()
        return v or None
    if not rest.startswith("{"):
        return None
    depth = 1
    body = rest[1:]
    for i, c in enumerate(body):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return body[:i]
    return None


def after_hashes(text):
    pos = text.rfind("####")
    if pos < 0:
        return None
    rest = text[pos + 4:].lstrip()
    line = rest.splitlines()[0].strip() if rest else ""
    return line or None


def extract_answer(response):
    b = last_boxed(response)
    return b if b is not None else after_hashes(response)


def gold_answer(gold):
    if "####" in gold:
        return after_hashes(gold) or ""
    if "\\boxed" in gold or "\\fbox" in gold:
        b = last_boxed(gold)
        if b is not None:
            return b
    return gold.strip()


def label(gold, response):
    g = gold_answer(gold)
    pred = extract_answer(response)
    verdict = verify(parse("$" + g + "$"), parse("$" + (pred or "") + "$"))
    return bool(verdict), pred, g


def main(src, dst):
    out = []
    with open(src, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                gold, response = rec["gold"], rec["response"]
            except (json.JSONDecodeError, KeyError) as e:
                sys.exit(f"{src}:{n}: bad record ({e})")
            rec["label"], rec["extracted"], rec["gold_answer"] = label(gold, response)
            out.append(rec)
    with open(dst, "w", encoding="utf-8") as f:
        for rec in out:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    pos = sum(r["label"] for r in out)
    print(f"labelled {len(out)} pairs ({pos} true, {len(out) - pos} false) -> {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: label_math_answers.py PAIRS.jsonl LABELLED.jsonl")
    main(sys.argv[1], sys.argv[2])
