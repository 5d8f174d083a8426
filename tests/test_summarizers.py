"""The summarizers on real models: a tiny T5 built locally, and the installed MiniLM."""

import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from inference.embedder import get_embedder
from inference.extractive import ExtractiveSummarizer
from inference.sentences import split_sentences
from inference.t5 import PREFIX, T5Summarizer, get_t5_summarizer
from services.methods import T5NotConfigured, choose_method

LINES = [
    "The customer could not log in after changing the password on Monday.",
    "The agent checked the email address and sent a fresh reset link.",
    "That link expired before it was opened, so the agent sent another one.",
    "With the second link the customer logged in and thanked the agent.",
    "Then the customer noticed the March invoice had been charged twice.",
    "The agent refunded the duplicate charge and promised a confirmation email.",
    "The customer asked whether the mobile app supports two factor authentication.",
    "The agent explained how to turn it on from the security settings page.",
    "They briefly chatted about the weather, a football match and holidays.",
    "The conversation ended with the customer rating the support as excellent.",
]
# Texts of one to three lines: different lengths, all within a 512-token window.
TEXTS = [" ".join(LINES[i : i + 1 + i % 3]) for i in range(len(LINES))]
LONG = " ".join(LINES)

SUPPORT_CHAT = (
    "I cannot log in to my account since yesterday. "
    "The password reset email never arrives in my inbox. "
    "By the way, the weather in Lisbon is lovely this week. "
    "I tried resetting my password three times but no reset email came. "
    "My cat knocked over a plant this morning. "
    "Please help me get back into my account, the login page keeps rejecting my password."
)
ON_TOPIC = [
    "I cannot log in to my account since yesterday.",
    "The password reset email never arrives in my inbox.",
    "I tried resetting my password three times but no reset email came.",
    "Please help me get back into my account, the login page keeps rejecting my password.",
]


@pytest.fixture(scope="module")
def t5(tiny_t5_path: Path) -> T5Summarizer:
    return T5Summarizer(tiny_t5_path, "cpu")


@pytest.fixture(scope="module")
def t5_small_window(tiny_t5_path: Path) -> T5Summarizer:
    return T5Summarizer(tiny_t5_path, "cpu", input_tokens=40, batch_size=3)


@pytest.fixture(scope="module")
def extractive() -> ExtractiveSummarizer:
    return ExtractiveSummarizer(get_embedder(None, "cpu"), batch_size=16)


def tokens(summarizer: ExtractiveSummarizer, text: str) -> int:
    return len(summarizer.tokenizer(text, add_special_tokens=False).input_ids)


# T5


def test_t5_loads_offline_from_the_saved_directory(t5: T5Summarizer, tiny_t5_path: Path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in tiny_t5_path.iterdir()
    }
    assert not t5.model.training
    assert t5.model.device.type == "cpu"
    # The self-made tokenizer states no limit: the window falls back to 512.
    assert t5.input_tokens == 512
    summary = t5.summarize(TEXTS[0], max_length=10, min_length=0)
    assert (summary.method, summary.model, summary.chunks) == ("t5", "tiny-t5", 1)


def test_t5_reads_the_text_with_the_summarize_prefix(t5: T5Summarizer):
    summaries = t5.summarize_many(TEXTS, max_length=6, min_length=0)
    for text, summary in zip(TEXTS, summaries, strict=True):
        prefixed = t5.tokenizer(PREFIX + text).input_ids
        assert summary.input_tokens == len(prefixed)
        assert summary.input_tokens > len(t5.tokenizer(text).input_ids)


def test_t5_summary_is_what_generate_makes_of_the_prefixed_text(t5: T5Summarizer):
    summaries = t5.summarize_many(TEXTS[:4], max_length=9, min_length=2)
    for text, summary in zip(TEXTS[:4], summaries, strict=True):
        encoded = t5.tokenizer([PREFIX + text], return_tensors="pt")
        with torch.inference_mode():
            output = t5.model.generate(
                **encoded, max_new_tokens=9, min_new_tokens=2, do_sample=False, num_beams=1
            )
        generated = output[0, 1:].tolist()
        if t5.tokenizer.eos_token_id in generated:
            generated = generated[: generated.index(t5.tokenizer.eos_token_id)]
        assert summary.output_tokens == len(generated)
        assert summary.text == t5.tokenizer.decode(generated, skip_special_tokens=True).strip()


def test_t5_honours_min_length(t5: T5Summarizer):
    unconstrained = t5.summarize_many(TEXTS, max_length=12, min_length=0)
    # The model stops at once on some texts: min_length has something to change.
    assert min(s.output_tokens for s in unconstrained) < 5
    constrained = t5.summarize_many(TEXTS, max_length=12, min_length=5)
    assert all(5 <= s.output_tokens <= 12 for s in constrained)


def test_t5_honours_max_length(t5: T5Summarizer):
    short = t5.summarize_many(TEXTS, max_length=7, min_length=0)
    assert all(s.output_tokens <= 7 for s in short)
    assert max(s.output_tokens for s in short) == 7
    # Beyond generate's default of 20 tokens: the requested length is the one in force.
    long = t5.summarize_many(TEXTS, max_length=25, min_length=0)
    assert all(s.output_tokens <= 25 for s in long)
    assert max(s.output_tokens for s in long) > 20


def test_t5_chunks_a_text_longer_than_its_window(t5_small_window: T5Summarizer):
    summary = t5_small_window.summarize(LONG, max_length=12, min_length=3)
    assert summary.chunks > 1
    assert 3 <= summary.output_tokens <= 12
    # Every chunk was read with the prefix and within the window.
    text_tokens = len(t5_small_window.tokenizer(LONG, add_special_tokens=False).input_ids)
    assert text_tokens < summary.input_tokens <= summary.chunks * 40


def test_t5_chunks_fit_the_window(t5_small_window: T5Summarizer):
    # Each line is 35 to 42 tokens, longer than half this window: chunks cut between words.
    pieces = t5_small_window.chunk(LONG)
    assert len(pieces) > len(LINES)
    assert " ".join(pieces).split() == LONG.split()
    for piece in pieces:
        assert len(t5_small_window.tokenizer(PREFIX + piece).input_ids) <= 40
    assert t5_small_window.chunk("A short text.") == ["A short text."]
    assert t5_small_window.chunk(" \n ") == []


def test_t5_chunks_end_at_sentence_ends(tiny_t5_path: Path):
    # Two lines fit a 100-token window, three do not.
    summarizer = T5Summarizer(tiny_t5_path, "cpu", input_tokens=100)
    pieces = summarizer.chunk(LONG)
    assert pieces == [" ".join(LINES[i : i + 2]) for i in range(0, len(LINES), 2)]


def test_t5_batched_equals_one_by_one(t5_small_window: T5Summarizer):
    texts = [*TEXTS[:5], LONG, "", TEXTS[7]]
    batched = t5_small_window.summarize_many(texts, max_length=10, min_length=2)
    alone = [t5_small_window.summarize(t, max_length=10, min_length=2) for t in texts]
    assert batched == alone
    assert [s.chunks > 1 for s in batched] == [len(t5_small_window.chunk(t)) > 1 for t in texts]


def test_t5_blank_text_has_an_empty_summary(t5: T5Summarizer):
    for summary in t5.summarize_many(["", "  \n\t "], max_length=10, min_length=5):
        assert (summary.text, summary.output_tokens, summary.chunks) == ("", 0, 0)


@pytest.mark.parametrize(("max_length", "min_length"), [(0, 0), (5, 6), (5, -1)])
def test_summarizers_reject_impossible_lengths(
    t5: T5Summarizer, extractive: ExtractiveSummarizer, max_length, min_length
):
    for summarizer in (t5, extractive):
        with pytest.raises(ValueError, match="_length"):
            summarizer.summarize("Some text.", max_length=max_length, min_length=min_length)


def test_get_t5_summarizer_loads_once_per_process_and_path(tiny_t5_path: Path, tmp_path: Path):
    first = get_t5_summarizer(tiny_t5_path, "cpu")
    assert get_t5_summarizer(tiny_t5_path, "cpu") is first
    copy = tmp_path / "tiny-t5"
    copy.mkdir()
    for file in tiny_t5_path.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    assert get_t5_summarizer(copy, "cpu") is not first


# Extractive


def test_extractive_picks_central_sentences_in_original_order(extractive: ExtractiveSummarizer):
    summary = extractive.summarize(SUPPORT_CHAT, max_length=55, min_length=0)
    assert summary.text == " ".join(ON_TOPIC)
    assert "Lisbon" not in summary.text
    assert "cat" not in summary.text
    assert summary.output_tokens == tokens(extractive, summary.text) <= 55
    assert summary.input_tokens == tokens(extractive, SUPPORT_CHAT)
    assert (summary.method, summary.model, summary.chunks) == (
        "extractive",
        "sentence-transformers/all-MiniLM-L6-v2",
        1,
    )


@pytest.mark.parametrize("max_length", [8, 12, 20, 33, 40, 70, 200])
def test_extractive_stays_within_max_length(extractive: ExtractiveSummarizer, max_length):
    summary = extractive.summarize(SUPPORT_CHAT, max_length=max_length, min_length=0)
    assert 0 < summary.output_tokens == tokens(extractive, summary.text) <= max_length
    sentences = split_sentences(SUPPORT_CHAT)
    chosen = split_sentences(summary.text)
    if max_length >= 10:  # the shortest sentence has 9 tokens: whole sentences only
        positions = [sentences.index(s) for s in chosen]
        assert positions == sorted(positions)
    else:
        assert len(chosen) == 1
        assert SUPPORT_CHAT.startswith(chosen[0]) or any(s.startswith(chosen[0]) for s in sentences)


def test_extractive_takes_lower_ranked_sentences_to_reach_min_length(
    extractive: ExtractiveSummarizer,
):
    # The two best sentences make 24 tokens and the third does not fit in 34.
    best_two = extractive.summarize(SUPPORT_CHAT, max_length=34, min_length=0)
    assert best_two.output_tokens == 24
    assert "cat" not in best_two.text
    filled = extractive.summarize(SUPPORT_CHAT, max_length=34, min_length=30)
    assert 30 <= filled.output_tokens <= 34
    assert "cat" in filled.text


def test_extractive_keeps_line_breaks_between_messages(extractive: ExtractiveSummarizer):
    chat = (
        "user: my password reset email never arrives\n"
        "assistant: sorry to hear that, let me check your account\n"
        "user: thanks, my cat says hi\n"
        "assistant: the reset email went to an old address, I updated your email"
    )
    summary = extractive.summarize(chat, max_length=40, min_length=0)
    assert "\n" in summary.text
    assert all(line in chat.splitlines() for line in summary.text.splitlines())


def test_extractive_one_sentence(extractive: ExtractiveSummarizer):
    sentence = "The customer wants the duplicate March charge refunded to the original card."
    assert extractive.summarize(sentence, max_length=50, min_length=10).text == sentence
    cut = extractive.summarize(sentence, max_length=6, min_length=0)
    assert sentence.startswith(cut.text)
    assert 0 < cut.output_tokens == tokens(extractive, cut.text) <= 6
    # Cut between words, not inside one.
    assert sentence[len(cut.text)] == " "


def test_extractive_blank_and_unpunctuated_text(extractive: ExtractiveSummarizer):
    blank, spaces, words, long_word = extractive.summarize_many(
        ["", "   \n\t  ", "this text has no full stop at all", "a" * 300],
        max_length=5,
        min_length=0,
    )
    for summary in (blank, spaces):
        assert (summary.text, summary.input_tokens, summary.output_tokens, summary.chunks) == (
            "",
            0,
            0,
            0,
        )
    assert words.text == "this text has no full"
    assert words.output_tokens == 5
    assert 0 < long_word.output_tokens <= 5
    assert long_word.text == "a" * len(long_word.text)


def test_extractive_many_equals_one_by_one(extractive: ExtractiveSummarizer):
    texts = [SUPPORT_CHAT, LONG, "Just one sentence here.", "", TEXTS[2]]
    many = extractive.summarize_many(texts, max_length=30, min_length=5)
    assert many == [extractive.summarize(t, max_length=30, min_length=5) for t in texts]


# Sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello there. How are you? Fine!", ["Hello there.", "How are you?", "Fine!"]),
        ("Dr. Smith paid 3.50 dollars, e.g. in cash. Then left.",
         ["Dr. Smith paid 3.50 dollars, e.g. in cash.", "Then left."]),
        ('He said "stop." Then he ran.', ['He said "stop."', "Then he ran."]),
        ("Wait... what?! ok", ["Wait...", "what?!", "ok"]),
        ("user: hi\n\nassistant: hello", ["user: hi", "assistant: hello"]),
        ("no punctuation", ["no punctuation"]),
        (" \n ", []),
    ],
)  # fmt: skip
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


# Method choice


@pytest.mark.parametrize(
    ("requested", "configured", "expected"),
    [
        ("auto", True, "t5"),
        ("auto", False, "extractive"),
        ("t5", True, "t5"),
        ("extractive", True, "extractive"),
        ("extractive", False, "extractive"),
    ],
)
def test_choose_method(requested, configured, expected):
    assert choose_method(requested, configured) == expected


def test_t5_without_a_model_directory_says_how_to_configure_it():
    with pytest.raises(T5NotConfigured, match="SUMMARIZER_MODEL_PATH") as raised:
        choose_method("t5", False)
    assert "save_pretrained" in str(raised.value)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="abstractive"):
        choose_method("abstractive", True)


def test_method_choice_imports_without_torch():
    check = (
        "import sys, services.methods, inference.summary; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", check], cwd=root, check=True)
