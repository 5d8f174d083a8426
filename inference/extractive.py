"""Extractive summaries: the text's most central sentences, ranked on MiniLM embeddings.

A sentence's score is its cosine similarity to the centroid of all the text's
sentence embeddings. Sentences are taken best first while they fit in
``max_length`` tokens (of the embedder's tokenizer, special tokens not
counted). Once ``min_length`` is reached selection stops at the first sentence
that does not fit; below it, shorter lower-ranked sentences that fit are
taken. The summary lists the chosen sentences in their original order.

When no sentence fits (a single sentence, or every sentence, longer than
``max_length``), the best-ranked sentence is truncated to ``max_length``
tokens, at a word boundary where it has one. The summary never exceeds
``max_length``.
"""

from collections.abc import Sequence

import numpy as np

from inference.embedder import Embedder
from inference.sentences import sentence_spans
from inference.summary import Summarizer, Summary, check_lengths


class ExtractiveSummarizer(Summarizer):
    def __init__(self, embedder: Embedder, *, batch_size: int = 64) -> None:
        self.embedder = embedder
        self.tokenizer = embedder.tokenizer
        self.batch_size = batch_size
        self.name = embedder.info.model

    def summarize_many(
        self, texts: Sequence[str], *, max_length: int, min_length: int
    ) -> list[Summary]:
        """One summary per text; the sentences of all texts are embedded together."""
        check_lengths(max_length, min_length)
        spans = [sentence_spans(text) for text in texts]
        sentences = [
            text[a:b] for text, text_spans in zip(texts, spans, strict=True) for a, b in text_spans
        ]
        vectors = self.embedder.encode(sentences, self.batch_size) if sentences else None
        counts = self._count(sentences)
        summaries, first = [], 0
        for text, text_spans in zip(texts, spans, strict=True):
            last = first + len(text_spans)
            if text_spans:
                assert vectors is not None
                chosen = self._select(
                    vectors[first:last], counts[first:last], max_length, min_length
                )
                summary = self._join(text, text_spans, chosen, max_length)
            else:
                summary = ""
            summaries.append(
                Summary(
                    text=summary,
                    method="extractive",
                    model=self.name,
                    input_tokens=sum(counts[first:last]),
                    output_tokens=self._count([summary])[0] if summary else 0,
                    chunks=1 if text_spans else 0,
                    backend=self.embedder.info.backend,
                )
            )
            first = last
        return summaries

    @staticmethod
    def _select(
        vectors: np.ndarray, counts: list[int], max_length: int, min_length: int
    ) -> list[int]:
        """Indices of the chosen sentences; the best one alone (to truncate) when none fits."""
        centroid = vectors.mean(axis=0)
        norm = float(np.linalg.norm(centroid))
        scores = vectors @ centroid / norm if norm > 0 else np.zeros(len(vectors))
        chosen, total = [], 0
        for i in np.argsort(-scores, kind="stable").tolist():
            if total + counts[i] <= max_length:
                chosen.append(i)
                total += counts[i]
            elif total >= min_length and chosen:
                break
        return chosen or [int(np.argmax(scores))]

    def _join(
        self, text: str, spans: list[tuple[int, int]], chosen: list[int], max_length: int
    ) -> str:
        if len(chosen) == 1:
            start, end = spans[chosen[0]]
            return self._truncate(text[start:end], max_length)
        parts = []
        for i in sorted(chosen):
            start, end = spans[i]
            following = text[end : spans[i + 1][0]] if i + 1 < len(spans) else ""
            parts.append(text[start:end] + ("\n" if "\n" in following else " "))
        return "".join(parts).strip()

    def _truncate(self, sentence: str, max_length: int) -> str:
        encoding = self.tokenizer(
            sentence, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        if len(encoding["input_ids"]) <= max_length:
            return sentence
        offsets, words = encoding["offset_mapping"], encoding.word_ids()
        keep = max_length
        while keep > 0 and words[keep] == words[keep - 1]:
            keep -= 1
        if keep == 0:  # one word longer than max_length: cut inside it
            keep = max_length
        # Cutting inside a word can tokenize into more pieces; shorten until it fits.
        while keep > 0:
            cut = sentence[: offsets[keep - 1][1]].rstrip()
            if self._count([cut])[0] <= max_length:
                return cut
            keep -= 1
        return ""

    def _count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]
