"""What a summarizer returns, whichever method made it.

Lengths are in tokens of the model that did the work: T5's tokenizer for
``t5``, the embedder's tokenizer for ``extractive``; special tokens (the
end-of-sequence mark, ``[CLS]``) are never counted in a summary's length.
"""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from services.methods import Method


@dataclass(frozen=True)
class Summary:
    text: str
    method: Method
    model: str
    # t5: tokens the encoder read on the first pass, "summarize: " prefix and
    # end-of-sequence mark included; extractive: tokens of the text.
    input_tokens: int
    output_tokens: int
    # Pieces the text was cut into to fit the model's input window (0 for an empty text).
    chunks: int
    # What ran the model: torch, openvino, onnx or onnx-int8 (for extractive, the embedder's).
    backend: str = "torch"


def check_lengths(max_length: int, min_length: int) -> None:
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")
    if not 0 <= min_length <= max_length:
        raise ValueError(f"min_length must be between 0 and max_length, not {min_length}")


class Summarizer(ABC):
    """Summarises many texts at once; one text is a batch of one."""

    @abstractmethod
    def summarize_many(
        self, texts: Sequence[str], *, max_length: int, min_length: int
    ) -> list[Summary]: ...

    def summarize(self, text: str, *, max_length: int, min_length: int) -> Summary:
        return self.summarize_many([text], max_length=max_length, min_length=min_length)[0]
