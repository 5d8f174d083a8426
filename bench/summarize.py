"""T5 summarization overhead: ``T5Summarizer.summarize_many`` against raw ``model.generate``.

    python -m bench.summarize [--texts 64] [--words 100] [--batch 16] [--new-tokens 32]

A T5 of t5-small's size (d_model 512, d_ff 2048, 6 + 6 layers, 8 heads, vocab
32128) with random weights, and the tokenizer the tests build, is saved to a
temporary directory and loaded from it as a worker loads a model. In one run,
on the same ``--texts`` texts of ``--words`` words:

1. raw: the texts, tokenized beforehand with the ``summarize: `` prefix, in
   batches of ``--batch`` through ``model.generate`` (greedy), the model alone;
2. convoq: ``T5Summarizer.summarize_many`` with the same batch size, which
   tokenizes, plans chunks, batches, generates and decodes.

Both sides generate exactly ``--new-tokens`` tokens a text (the minimum equals
the maximum). Each side runs ``--rounds`` times, alternating; the best round
counts. It prints texts/s for both and the ratio (goal: at least 0.85). It is
a benchmark, not a test.
"""

import argparse
import random
import tempfile
import time
from pathlib import Path

import inference  # noqa: F401  # isort: skip  (before torch: env as in a worker)
import torch
from transformers import T5Config, T5ForConditionalGeneration

from bench.figures import record
from inference.t5 import PREFIX, T5Summarizer
from tests.tiny_t5 import CORPUS, build_tokenizer

T5_SMALL = {"d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6, "num_heads": 8}


def save_t5_small_sized(directory: Path) -> Path:
    tokenizer = build_tokenizer()
    config = T5Config(
        vocab_size=32128, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **T5_SMALL
    )
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def make_texts(count: int, words: int) -> list[str]:
    vocabulary = CORPUS.split()
    rng = random.Random(0)
    return [" ".join(rng.choices(vocabulary, k=words)) + "." for _ in range(count)]


def raw_generate(summarizer: T5Summarizer, texts: list[str], batch: int, new_tokens: int) -> float:
    """Texts per second through ``model.generate`` on pre-tokenized batches."""
    batches = [
        summarizer.tokenizer(
            [PREFIX + text for text in texts[start : start + batch]],
            padding=True,
            return_tensors="pt",
        ).to(summarizer.device)
        for start in range(0, len(texts), batch)
    ]
    started = time.perf_counter()
    with torch.inference_mode():
        for encoded in batches:
            summarizer.model.generate(
                **encoded,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                num_beams=1,
            )
    return len(texts) / (time.perf_counter() - started)


def convoq_summarize(summarizer: T5Summarizer, texts: list[str], new_tokens: int) -> float:
    """Texts per second through ``summarize_many``."""
    started = time.perf_counter()
    summaries = summarizer.summarize_many(texts, max_length=new_tokens, min_length=new_tokens)
    elapsed = time.perf_counter() - started
    assert all(s.output_tokens == new_tokens and s.chunks == 1 for s in summaries)
    return len(texts) / elapsed


def rounds(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.summarize", description=__doc__)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    texts = make_texts(args.texts, args.words)
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        path = save_t5_small_sized(Path(directory) / "t5-small-random")
        summarizer = T5Summarizer(path, "cpu", batch_size=args.batch)
        print(f"built, saved and loaded in {time.perf_counter() - started:.1f} s")
    input_tokens = [len(summarizer.tokenizer(PREFIX + t).input_ids) for t in texts]
    print(
        f"{args.texts} texts of {args.words} words ({min(input_tokens)}-{max(input_tokens)} "
        f"tokens), batch {args.batch}, {args.new_tokens} new tokens, "
        f"{torch.get_num_threads()} torch threads"
    )

    raw_generate(summarizer, texts[: args.batch], args.batch, 4)  # warm-up
    raw, convoq = [], []
    for _ in range(args.rounds):
        raw.append(raw_generate(summarizer, texts, args.batch, args.new_tokens))
        convoq.append(convoq_summarize(summarizer, texts, args.new_tokens))

    print(f"raw model.generate (pre-tokenized): {max(raw):6.2f} texts/s ({rounds(raw)})")
    print(f"T5Summarizer.summarize_many:        {max(convoq):6.2f} texts/s ({rounds(convoq)})")
    print(f"ratio summarize_many ÷ raw:         {max(convoq) / max(raw):6.3f} (goal ≥ 0.85)")
    record("raw model.generate, t5-small size, pre-tokenized", max(raw), "texts/s", digits=2)
    record("T5Summarizer.summarize_many", max(convoq), "texts/s", digits=2)
    record("ratio summarize_many ÷ raw (goal ≥ 0.85)", max(convoq) / max(raw), digits=3)


if __name__ == "__main__":
    main()
