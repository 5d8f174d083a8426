"""Which summarizer a job uses. Imports nothing heavy: the API checks a request with it,
and it must never import ``inference``."""

from typing import Literal

Method = Literal["t5", "extractive"]
REQUESTABLE = ("auto", "t5", "extractive")


class T5NotConfigured(RuntimeError):
    """The T5 summarizer was asked for but no model directory is configured."""

    def __init__(self) -> None:
        super().__init__(
            "the t5 summarizer is not configured: set SUMMARIZER_MODEL_PATH to a local T5 "
            "directory (for example t5-small saved with save_pretrained), or ask for "
            "'extractive' or 'auto'"
        )


def choose_method(requested: str, t5_configured: bool) -> Method:
    """The method that runs: ``auto`` is ``t5`` when configured, else ``extractive``.

    Raises ``T5NotConfigured`` for ``t5`` without a model directory and
    ``ValueError`` for an unknown name.
    """
    if requested == "auto":
        return "t5" if t5_configured else "extractive"
    if requested == "t5":
        if not t5_configured:
            raise T5NotConfigured
        return "t5"
    if requested == "extractive":
        return "extractive"
    raise ValueError(f"unknown summary method {requested!r}; expected one of {REQUESTABLE}")
