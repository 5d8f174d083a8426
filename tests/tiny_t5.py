"""A tiny T5 built here, so the real ``from_pretrained`` path runs without a download.

Random weights (seeded) in a small config, and a Unigram tokenizer trained on
the corpus below, saved together with ``save_pretrained`` as a T5 directory is.
Its summaries are gibberish (a token repeated, or nothing); their lengths,
batching and chunking are real.

Other test modules get the fixture with ``pytest_plugins = ["tests.tiny_t5"]``
(or the same line in ``tests/conftest.py``).
"""

import json
import string
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

CORPUS = """\
summarize: The customer could not log in to the account after the password was changed.
The agent asked for the email address and sent a reset link to the inbox.
The reset link expired before the customer opened it, so a new one was sent.
After the second reset the customer logged in and thanked the agent for the help.
Later the conversation moved to billing: the invoice for March was charged twice.
The agent refunded the second charge and promised an email confirming the refund.
The customer also asked whether the mobile app supports two factor authentication.
The agent explained how to enable it from the security page of the settings menu.
Questions about the weather, football matches, holidays and cooking came up too.
Each message has a role, a time and some text; summaries keep what matters most.
"""
VOCAB_SIZE = 400


def build_tokenizer(corpus: str = CORPUS, vocab_size: int = VOCAB_SIZE) -> T5Tokenizer:
    """A T5 tokenizer (pad 0, eos 1, unk 2, as in T5) with a Unigram model trained on ``corpus``."""
    unigram = Tokenizer(models.Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
    )
    unigram.train_from_iterator(corpus.splitlines(), trainer)
    vocab = [(piece, score) for piece, score in json.loads(unigram.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_tiny_t5(directory: Path, *, seed: int = 0, **config: int) -> Path:
    """Saves a random-weight T5 and its tokenizer in ``directory``; ``config`` overrides sizes."""
    tokenizer = build_tokenizer()
    sizes = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4} | config
    t5_config = T5Config(
        vocab_size=sizes.pop("vocab_size", len(tokenizer)),
        # T5 checkpoints carry it; a T5Config built in code has none.
        decoder_start_token_id=tokenizer.pad_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sizes,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(t5_config).eval()
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        # Logits are tied to these rows. Random ones favour <pad>: a zero row makes
        # summaries of real tokens, as a trained model's are. A longer </s> row makes
        # the model stop at once on some inputs and never on others, so both
        # min_length and max_length have work to do.
        embeddings[tokenizer.pad_token_id].zero_()
        embeddings[tokenizer.eos_token_id] *= 2.5
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_t5_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("models") / "tiny-t5")
