#!/usr/bin/env python3
"""One-off generator of the small BPE test tokenizer under testdata/tokenizers/.

Not part of the product: run it from a virtual environment OUTSIDE the repository that has
Hugging Face `tokenizers` (the 0.23 line, the same as the Rust crate), e.g.

    python3 -m venv /work/venvs/tok && /work/venvs/tok/bin/pip install tokenizers==0.23.3
    cargo build --workspace --bins
    /work/venvs/tok/bin/python scripts/make_test_tokenizer.py \
        --v4post target/debug/v4post --vocab 400 --out testdata/tokenizers/bpe-400

What it does:
1. samples prompts and reference solutions of every built-in domain with
   `v4post tasks sample` (train split, seed 0, the domain's own difficulty, --per-domain each);
2. trains a byte-level BPE (ByteLevel pre-tokenizer and decoder: all 256 bytes are in the
   initial alphabet, so any text round-trips) of --vocab tokens on every string of those rows;
3. the V4 special tokens (`datasets::tokenizer::SPECIALS`, read from datasets/src/tokenizer.rs)
   are the trainer's special tokens, i.e. the tokenizer's added tokens, ids 0..20 in order;
4. writes tokenizer.json and a small tokenizer_config.json, then checks: every special encodes
   to its single id, the sampled text round-trips, and the vocabulary is exactly --vocab.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = pathlib.Path(__file__).resolve().parent.parent


def specials() -> list[str]:
    """SPECIALS of datasets/src/tokenizer.rs, in order (the one source of the list)."""
    src = (ROOT / "datasets/src/tokenizer.rs").read_text(encoding="utf-8")
    block = re.search(r"pub const SPECIALS: &\[&str\] = &\[(.*?)\];", src, re.S)
    if not block:
        sys.exit("SPECIALS not found in datasets/src/tokenizer.rs")
    return re.findall(r'"((?:[^"\\]|\\.)*)"', block.group(1))


def strings(v):
    """Every string inside a JSON value (strings that hold JSON are opened too)."""
    if isinstance(v, str):
        s = v.strip()
        if s[:1] in "[{":
            try:
                yield from strings(json.loads(s))
                return
            except json.JSONDecodeError:
                pass
        if s:
            yield v
    elif isinstance(v, list):
        for x in v:
            yield from strings(x)
    elif isinstance(v, dict):
        for k, x in v.items():
            if k not in ("prompt_id", "split", "family"):
                yield from strings(x)


def corpus(v4post: str, per_domain: int) -> list[str]:
    listing = json.loads(subprocess.check_output([v4post, "tasks", "list", "--json"]))
    rows = listing if isinstance(listing, list) else listing.get("domains", [])
    domains = [d["domain"] if isinstance(d, dict) else d for d in rows]
    if not domains:
        sys.exit("`v4post tasks list --json` listed no domains")
    texts = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in domains:
            out = pathlib.Path(tmp) / f"{d}.jsonl"
            subprocess.check_call(
                [v4post, "tasks", "sample", "--domain", d, "--n", str(per_domain), "--out", str(out)],
                stdout=subprocess.DEVNULL,
            )
            for line in out.read_text(encoding="utf-8").splitlines():
                texts.extend(strings(json.loads(line)))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v4post", default=str(ROOT / "target/debug/v4post"))
    ap.add_argument("--vocab", type=int, default=400)
    ap.add_argument("--per-domain", type=int, default=40)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    a = ap.parse_args()

    sp = specials()
    texts = corpus(a.v4post, a.per_domain)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=a.vocab,
        special_tokens=sp,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)

    a.out.mkdir(parents=True, exist_ok=True)
    tok.save(str(a.out / "tokenizer.json"), pretty=True)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": sp[0],
        "eos_token": sp[1],
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    (a.out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", "utf-8")

    # checks, on the file as written
    back = Tokenizer.from_file(str(a.out / "tokenizer.json"))
    for i, s in enumerate(sp):
        ids = back.encode(s, add_special_tokens=False).ids
        assert ids == [i], f"special {s} encodes to {ids}, expected [{i}]"
    for t in texts[:2000]:
        ids = back.encode(t, add_special_tokens=False).ids
        assert back.decode(ids, skip_special_tokens=False) == t, f"round trip failed: {t!r}"
    assert back.get_vocab_size(with_added_tokens=True) == a.vocab, back.get_vocab_size(with_added_tokens=True)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tok = sum(len(back.encode(t, add_special_tokens=False).ids) for t in texts)
    print(
        f"{a.out}/tokenizer.json: vocab {a.vocab} ({len(sp)} added specials), trained on {len(texts)} strings, "
        f"{n_bytes} bytes -> {n_tok} tokens ({n_bytes / n_tok:.2f} bytes/token)"
    )


if __name__ == "__main__":
    main()
