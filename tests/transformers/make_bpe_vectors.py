#!/usr/bin/env python3
"""Writes GPT-2 byte-level BPE conformance vectors: a vocabulary trained on some text, and
Hugging Face's token ids for a set of strings.

    python3 tests/transformers/make_bpe_vectors.py OUT_DIR [--text FILE] [--vocab-size N]

OUT_DIR receives:

- `vocab.json` and `merges.txt`: a byte-level BPE vocabulary (the 256 byte tokens, then merges)
  trained by `tokenizers.ByteLevelBPETokenizer` on `--text` (default: the demo's training
  slice, examples/gpt2/assets/train_slice.txt), `--vocab-size` tokens (default 1000), in the
  format of a Hugging Face GPT-2 directory;
- `vectors.json`: `{"texts": [...], "ids": [[...], ...], "tokenizer": "..."}`, the ids that
  Hugging Face `tokenizers` gives for each text, set up as GPT-2's tokenizer.json is (BPE, the
  byte-level pre-tokenizer without a prefix space, the byte-level decoder), each checked to
  decode back to its text. The texts are
  windows of the demo's held-out slice and strings that reach every branch of GPT-2's
  pre-tokenization: contractions (case-sensitive), runs of letters, digits and other
  characters with an optional leading space, runs of whitespace before a word, Unicode letters,
  numbers and whitespace outside ASCII, emoji and combining marks.

tests/demo_test.ts checks examples/gpt2/demo.ts's tokenizer against the committed set
(tests/fixtures/bpe). Needs tokenizers.
"""

import argparse
import json
import os
import sys

try:
    import tokenizers
    from tokenizers import ByteLevelBPETokenizer, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
except ImportError as missing:  # a clear line, and --help, without the packages
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit(f"{sys.argv[0]}: needs the tokenizers package ({missing})")

HERE = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.path.join(HERE, "..", "..", "examples", "gpt2", "assets")

EDGE_CASES = [
    "Hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "a  b   c    d",
    "tabs\tand\nnew\n\nlines\r\n",
    " \n \t ",
    "I'm you're we've they'll she'd it's",
    "I'M YOU'RE IT'S don't",
    "x's 's' ''' ' s",
    "123 4567 89.5 -0.25 1,000,000",
    "naïve café — “quotes” … ½ Ⅻ",
    "日本語のテキスト、漢字。",
    "٣٤٥ ١٢",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "e\u0301 combining a\u0308",
    "nel\u0085x bom\ufeffy fs\u001cz us\u001fw",
    "nbsp\u00a0x em\u2003y ideo\u3000z ls\u2028p",
    "$$$ !!! ??? ... --- ___",
    "a \u0085b c\u0085 d \u0085\u0085 e",
    "x \ufeff y \ufeffz \ufeff",
    "a \u2003b c\u2003 d \u00a0 e",
    "a \u001cb c \u001f d",
    "x\u200by \u200b z \u180e w",
    "two\n\n  spaces  \n end \n",
    "'s's'S don''t 's a\u2019s",
    "\ufb01ne \u00ad soft \u00b2\u00b3 \u2167",
    "KING RICHARD III:\nWhat, ho!",
    "",
]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--text", default=os.path.join(ASSETS, "train_slice.txt"))
    p.add_argument("--vocab-size", type=int, default=1000)
    args = p.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    with open(args.text, encoding="utf-8") as f:
        train = f.read()
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator([train], vocab_size=args.vocab_size, min_frequency=2,
                                show_progress=False)
    trainer.save_model(args.out_dir)

    # GPT-2's tokenizer.json: BPE, byte-level pre-tokenizer (no prefix space) and decoder.
    tok = Tokenizer(BPE.from_file(os.path.join(args.out_dir, "vocab.json"),
                                  os.path.join(args.out_dir, "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    with open(os.path.join(ASSETS, "heldout_slice.txt"), encoding="utf-8") as f:
        heldout = f.read()
    texts = [heldout[i:i + 600] for i in range(0, 6000, 1000)] + EDGE_CASES
    ids = [tok.encode(t).ids for t in texts]
    for t, i in zip(texts, ids):
        if tok.decode(i) != t:
            raise SystemExit(f"round trip failed for {t!r}: {tok.decode(i)!r}")
    with open(os.path.join(args.out_dir, "vectors.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer": f"tokenizers {tokenizers.__version__}: BPE, ByteLevel "
                   f"pre-tokenizer and decoder; vocabulary {tok.get_vocab_size()}",
                   "texts": texts, "ids": ids}, f, ensure_ascii=True)
    print(f"{args.out_dir}: {tok.get_vocab_size()} tokens, {len(texts)} texts, "
          f"{sum(len(i) for i in ids)} ids")


if __name__ == "__main__":
    main()
