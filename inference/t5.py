"""Abstractive summaries with T5, loaded once per process.

Decoding is greedy: deterministic, the fastest, and a text gets the same
summary alone or in a batch. ``max_length``/``min_length`` bound the tokens a
summary has (T5 tokens, the end-of-sequence mark not counted).

A text longer than the input window is cut into chunks at sentence boundaries
where one falls in the second half of the window (else mid-sentence), each
chunk is summarised, and the joined partial summaries are summarised again,
over as many rounds as it takes to fit the window.
"""

import bisect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, T5ForConditionalGeneration

from inference.backends.choice import Backend, BackendOptions, load_first
from inference.backends.fidelity import SUMMARY_TEXTS
from inference.backends.seq2seq import (
    DecodingTokens,
    ExportedGreedy,
    generation_config,
    load_exported_t5,
    until_eos,
)
from inference.device import select_device
from inference.per_process import PerProcess
from inference.sentences import sentence_spans
from inference.summary import Summarizer, Summary, check_lengths

log = logging.getLogger(__name__)

PREFIX = "summarize: "
# T5 was trained on 512-token inputs; its relative positions allow more, at a
# quadratic cost and with worse summaries.
DEFAULT_INPUT_TOKENS = 512
# Each round at least quarters what a chunk contributes, so a text within
# max_text_chars needs a handful of rounds; this only bounds a pathological one.
MAX_ROUNDS = 16


@dataclass(frozen=True)
class _Generated:
    text: str
    input_tokens: int
    output_tokens: int


class TorchGreedy:
    """Greedy decoding with ``generate`` on the torch model."""

    def __init__(self, model: T5ForConditionalGeneration, device: str, start: int) -> None:
        self.model = model
        self.device = device
        self.start = start

    def generate(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new: int, min_new: int
    ) -> list[list[int]]:
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=torch.from_numpy(input_ids).to(self.device),
                attention_mask=torch.from_numpy(attention_mask).to(self.device),
                max_new_tokens=max_new,
                min_new_tokens=min_new,
                do_sample=False,
                num_beams=1,
                decoder_start_token_id=self.start,
            )
        # Column 0 is the decoder start token.
        return output[:, 1:].tolist()


class T5Summarizer(Summarizer):
    def __init__(
        self,
        model_path: Path,
        device: str,
        *,
        input_tokens: int | None = None,
        batch_size: int = 16,
        backend: Backend = "torch",
        options: BackendOptions | None = None,
    ) -> None:
        started = time.perf_counter()
        self.model_path = Path(model_path)
        self.config = AutoConfig.from_pretrained(model_path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.name = self.model_path.name
        self.batch_size = batch_size
        self.backend = backend
        self.input_tokens = input_tokens or self._default_input_tokens()
        prefix_tokens = len(self.tokenizer(PREFIX, add_special_tokens=False).input_ids)
        # What a chunk may hold once the prefix and end-of-sequence mark are in.
        self._chunk_tokens = (
            self.input_tokens - prefix_tokens - self.tokenizer.num_special_tokens_to_add()
        )
        if self._chunk_tokens < 4:
            raise ValueError(f"input_tokens={self.input_tokens} leaves no room for text")
        generation = generation_config(self.model_path)
        self._eos = frozenset(self._token_ids(generation.eos_token_id))
        self._decoder_start = self._decoder_start_token_id(generation)
        self.generator: TorchGreedy | ExportedGreedy
        if backend == "torch":
            self.model = T5ForConditionalGeneration.from_pretrained(
                model_path, local_files_only=True
            )
            self.model.to(device).eval()
            self.generator = TorchGreedy(self.model, device, self._decoder_start)
        else:
            if options is None:
                raise ValueError(f"the {backend} backend needs BackendOptions")
            # What rows that have ended are fed; their tokens are never read.
            pad = generation.pad_token_id
            filler = self._decoder_start if pad is None else int(pad)
            tokens = DecodingTokens(self._decoder_start, self._eos, filler)
            self.generator = load_exported_t5(
                self.model_path,
                backend,
                options,
                tokens,
                lambda model: TorchGreedy(model, "cpu", self._decoder_start).generate,
            )
            device = "cpu"
        self.device = device
        log.info(
            "summarization model loaded",
            extra={
                "model": self.name,
                "device": device,
                "backend": backend,
                "seconds": time.perf_counter() - started,
            },
        )

    def summarize_many(
        self, texts: Sequence[str], *, max_length: int, min_length: int
    ) -> list[Summary]:
        """One summary per text; texts that fit the window share batched ``generate`` calls."""
        check_lengths(max_length, min_length)
        pieces = [self.chunk(text) for text in texts]
        chunks = [len(p) for p in pieces]
        input_tokens = [0] * len(texts)
        summaries: list[Summary | None] = [
            None if p else Summary("", "t5", self.name, 0, 0, 0, self.backend) for p in pieces
        ]
        # Partial summaries are kept short enough that each round shrinks a long text.
        partial_max = max(1, min(max_length, self._chunk_tokens // 4))
        partial_min = min(min_length, partial_max)
        for round_ in range(1, MAX_ROUNDS + 1):
            pending = [i for i, s in enumerate(summaries) if s is None]
            final = [i for i in pending if len(pieces[i]) == 1 or round_ == MAX_ROUNDS]
            long = [i for i in pending if len(pieces[i]) > 1 and round_ < MAX_ROUNDS]
            results = self._generate([" ".join(pieces[i]) for i in final], max_length, min_length)
            for i, result in zip(final, results, strict=True):
                input_tokens[i] = input_tokens[i] or result.input_tokens
                summaries[i] = Summary(
                    result.text,
                    "t5",
                    self.name,
                    input_tokens[i],
                    result.output_tokens,
                    chunks[i],
                    self.backend,
                )
            owners = [i for i in long for _ in pieces[i]]
            partials = self._generate(
                [piece for i in long for piece in pieces[i]], partial_max, partial_min
            )
            joined: dict[int, list[str]] = {i: [] for i in long}
            for i, result in zip(owners, partials, strict=True):
                joined[i].append(result.text)
                if round_ == 1:
                    input_tokens[i] += result.input_tokens
            for i, parts in joined.items():
                pieces[i] = self.chunk(" ".join(parts)) or [""]
            if not long:
                break
        return [s for s in summaries if s is not None]

    def chunk(self, text: str) -> list[str]:
        """``text`` cut into pieces that fit the input window with the prefix; none if blank."""
        if not text.strip():
            return []
        encoding = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        offsets = encoding["offset_mapping"]
        if len(offsets) <= self._chunk_tokens:
            return [text.strip()]
        token_starts = [start for start, _ in offsets]
        sentence_starts = {
            bisect.bisect_left(token_starts, start) for start, _ in sentence_spans(text)[1:]
        }
        words = encoding.word_ids()
        pieces, begin = [], 0
        while len(offsets) - begin > self._chunk_tokens:
            cut = self._cut(begin, sentence_starts, words)
            pieces.append(text[token_starts[begin] : token_starts[cut]].strip())
            begin = cut
        pieces.append(text[token_starts[begin] :].strip())
        return [p for p in pieces if p]

    def _cut(self, begin: int, sentence_starts: set[int], words: list[int | None]) -> int:
        """Where the chunk from token ``begin`` ends: the last sentence start, else word
        start, in the second half of the window; else the window's end."""
        limit = begin + self._chunk_tokens
        half_full = begin + self._chunk_tokens // 2
        candidates = range(limit, half_full, -1)
        for cut in candidates:
            if cut in sentence_starts:
                return cut
        for cut in candidates:
            if words[cut] != words[cut - 1]:
                return cut
        return limit

    def _generate(self, texts: list[str], max_length: int, min_length: int) -> list[_Generated]:
        results: list[_Generated | None] = [None] * len(texts)
        # Texts of similar length share a batch: less padding to compute.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            encoded = self.tokenizer(
                [PREFIX + texts[i] for i in batch],
                padding=True,
                truncation=True,
                max_length=self.input_tokens,
                return_tensors="np",
            )
            rows = self.generator.generate(
                encoded["input_ids"], encoded["attention_mask"], max_length, min_length
            )
            read = encoded["attention_mask"].sum(axis=1).tolist()
            for row, i, tokens_read in zip(rows, batch, read, strict=True):
                ids = until_eos(row, self._eos)
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                results[i] = _Generated(text, tokens_read, len(ids))
        return [r for r in results if r is not None]

    def _default_input_tokens(self) -> int:
        limits = [
            DEFAULT_INPUT_TOKENS,
            self.tokenizer.model_max_length,
            getattr(self.config, "n_positions", None),
        ]
        return min(limit for limit in limits if isinstance(limit, int) and limit > 0)

    def _decoder_start_token_id(self, generation: GenerationConfig) -> int:
        # A T5Config built in code (transformers 5) has no decoder_start_token_id;
        # T5 starts decoding from the pad token.
        for candidate in (
            generation.decoder_start_token_id,
            getattr(self.config, "decoder_start_token_id", None),
            self.config.pad_token_id,
        ):
            if candidate is not None:
                return int(candidate)
        raise ValueError(f"{self.name}: no decoder_start_token_id or pad_token_id in its config")

    @staticmethod
    def _token_ids(value: int | list[int] | None) -> list[int]:
        if value is None:
            return []
        return [value] if isinstance(value, int) else list(value)


def load_t5_summarizer(
    model_path: Path,
    device_preference: str = "auto",
    *,
    input_tokens: int | None = None,
    batch_size: int = 16,
    backend: str = "torch",
    options: BackendOptions | None = None,
) -> T5Summarizer:
    """A T5 summarizer on the backend asked for; ``auto``: the fastest that passes its check."""
    device = select_device(device_preference)
    return load_first(
        backend,
        device,
        Path(model_path).name,
        lambda name: T5Summarizer(
            Path(model_path),
            device,
            input_tokens=input_tokens,
            batch_size=batch_size,
            backend=name,
            options=options,
        ),
        measure=None if options is None else (Path(model_path), options, _auto_workload),
    )


def _auto_workload(summarizer: T5Summarizer) -> None:
    summarizer.summarize_many(SUMMARY_TEXTS[:2], max_length=16, min_length=8)


_loaded: PerProcess[T5Summarizer] = PerProcess()


def get_t5_summarizer(
    model_path: Path,
    device_preference: str = "auto",
    *,
    input_tokens: int | None = None,
    batch_size: int = 16,
    backend: str = "torch",
    options: BackendOptions | None = None,
) -> T5Summarizer:
    """This process's T5 summarizer, loaded on first use (and again if asked for another)."""
    return _loaded.get(
        (Path(model_path), device_preference, input_tokens, batch_size, backend, options),
        lambda: load_t5_summarizer(
            Path(model_path),
            device_preference,
            input_tokens=input_tokens,
            batch_size=batch_size,
            backend=backend,
            options=options,
        ),
    )
