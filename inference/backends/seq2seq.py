"""T5 exported as two graphs, and greedy decoding over them in numpy.

- ``encoder``: token ids and mask → every decoder layer's cross-attention keys
  and values, computed once per text;
- ``decoder``: one step with a key/value cache → the next token's logits and
  the cache grown by one position.

The decoder step is written out here from the model's own layers (the
self-attention over the cache with T5's relative position bias, the
cross-attention, the feed-forward), because transformers' cache objects do
not trace. Greedy decoding follows ``generate(do_sample=False, num_beams=1)``:
the end-of-sequence tokens are forbidden until ``min_new_tokens``, and
decoding stops when every row has ended or at ``max_new_tokens``. The export
is used only if it gives torch's tokens on ``fidelity.SUMMARY_TEXTS``.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, GenerationConfig, T5ForConditionalGeneration

from inference.backends.cache import Entry
from inference.backends.choice import Backend, BackendOptions
from inference.backends.fidelity import SUMMARY_LENGTHS, SUMMARY_TEXTS, check_tokens
from inference.backends.graph import Graph
from inference.backends.runtimes import cached_export, export_graph, open_graph

log = logging.getLogger(__name__)

EXPORT_FORMAT = "t5-greedy-kv-1"
# generate() settings that change greedy decoding and that this decoder does
# not implement, with their neutral values: a model that sets one stays on torch.
NEUTRAL_GENERATION = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "min_length": 0,
}

# (input ids, attention mask, max_new_tokens, min_new_tokens) → generated ids per row,
# without the decoder start token.
GreedyGenerate = Callable[[np.ndarray, np.ndarray, int, int], list[list[int]]]


@dataclass(frozen=True)
class DecodingTokens:
    start: int
    eos: frozenset[int]
    pad: int


def until_eos(ids: Sequence[int], eos: frozenset[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos:
            return list(ids[:position])
    return list(ids)


def _heads(states: torch.Tensor, heads: int, size: int) -> torch.Tensor:
    """(batch, length, heads x size) → (batch, heads, length, size)."""
    return states.view(states.shape[0], -1, heads, size).transpose(1, 2)


def _merge(states: torch.Tensor) -> torch.Tensor:
    return states.transpose(1, 2).reshape(states.shape[0], states.shape[2], -1)


class EncoderGraph(torch.nn.Module):
    def __init__(self, model: T5ForConditionalGeneration) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
        hidden = self.model.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state
        outputs = []
        for block in self.model.decoder.block:
            attention = block.layer[1].EncDecAttention
            heads, size = attention.n_heads, attention.key_value_proj_dim
            outputs += [
                _heads(attention.k(hidden), heads, size),
                _heads(attention.v(hidden), heads, size),
            ]
        return tuple(outputs)


class DecoderStepGraph(torch.nn.Module):
    def __init__(self, model: T5ForConditionalGeneration) -> None:
        super().__init__()
        self.model = model
        self.layers = len(model.decoder.block)

    def forward(
        self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor, *caches: torch.Tensor
    ) -> tuple:
        decoder = self.model.decoder
        cross, past = caches[: 2 * self.layers], caches[2 * self.layers :]
        hidden = decoder.embed_tokens(input_ids)
        step = past[0].shape[2]
        first = decoder.block[0].layer[0].SelfAttention
        relative = torch.arange(step + 1, dtype=torch.long)[None, :] - step
        buckets = first._relative_position_bucket(
            relative,
            bidirectional=False,
            num_buckets=first.relative_attention_num_buckets,
            max_distance=first.relative_attention_max_distance,
        )
        position_bias = first.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)
        padding = encoder_attention_mask[:, None, None, :].to(hidden.dtype)
        cross_mask = (1.0 - padding) * torch.finfo(hidden.dtype).min
        present = []
        for i, block in enumerate(decoder.block):
            layer = block.layer[0]
            attention = layer.SelfAttention
            heads, size = attention.n_heads, attention.key_value_proj_dim
            normed = layer.layer_norm(hidden)
            query = _heads(attention.q(normed), heads, size)
            keys = torch.cat([past[2 * i], _heads(attention.k(normed), heads, size)], dim=2)
            values = torch.cat([past[2 * i + 1], _heads(attention.v(normed), heads, size)], dim=2)
            present += [keys, values]
            weights = torch.softmax(query @ keys.transpose(2, 3) + position_bias, dim=-1)
            hidden = hidden + attention.o(_merge(weights @ values))

            layer = block.layer[1]
            attention = layer.EncDecAttention
            query = _heads(attention.q(layer.layer_norm(hidden)), heads, size)
            weights = torch.softmax(query @ cross[2 * i].transpose(2, 3) + cross_mask, dim=-1)
            hidden = hidden + attention.o(_merge(weights @ cross[2 * i + 1]))

            hidden = block.layer[-1](hidden)
        hidden = decoder.final_layer_norm(hidden)
        if self.model.config.scale_decoder_outputs:
            hidden = hidden * self.model.config.d_model**-0.5
        return (self.model.lm_head(hidden)[:, 0, :], *present)


def _cache_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]


class ExportedGreedy:
    """Greedy decoding over an exported T5."""

    def __init__(
        self, entry: Entry, backend: Backend, options: BackendOptions, tokens: DecodingTokens
    ) -> None:
        self.layers: int = entry.meta["layers"]
        self.heads: int = entry.meta["heads"]
        self.head_size: int = entry.meta["head_size"]
        self.token_agreement: float = entry.meta["token_agreement"]
        self.tokens = tokens
        self._encoder = open_graph(backend, entry.path, "encoder", options)
        self._decoder = open_graph(backend, entry.path, "decoder", options)
        self._cross = _cache_names("cross", self.layers)
        self._past = _cache_names("past", self.layers)

    def generate(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new: int, min_new: int
    ) -> list[list[int]]:
        input_ids = input_ids.astype(np.int64, copy=False)
        attention_mask = attention_mask.astype(np.int64, copy=False)
        rows = input_ids.shape[0]
        cross = self._encoder.run({"input_ids": input_ids, "attention_mask": attention_mask})
        feeds = dict(zip(self._cross, cross, strict=True))
        feeds["encoder_attention_mask"] = attention_mask
        empty = np.zeros((rows, self.heads, 0, self.head_size), dtype=np.float32)
        feeds.update(dict.fromkeys(self._past, empty))
        eos = np.array(sorted(self.tokens.eos), dtype=np.int64)
        current = np.full((rows, 1), self.tokens.start, dtype=np.int64)
        ended = np.zeros(rows, dtype=bool)
        generated = []
        for step in range(max_new):
            feeds["input_ids"] = current
            logits, *present = self._decoder.run(feeds)
            if step < min_new:
                logits[:, eos] = -np.inf
            chosen = np.where(ended, self.tokens.pad, logits.argmax(axis=-1))
            generated.append(chosen)
            ended |= np.isin(chosen, eos)
            if ended.all():
                break
            current = chosen[:, None].astype(np.int64)
            feeds.update(zip(self._past, present, strict=True))
        if not generated:
            return [[] for _ in range(rows)]
        return np.stack(generated, axis=1).tolist()


def generation_config(model_path: Path) -> GenerationConfig:
    """The generation settings ``from_pretrained`` gives the model."""
    try:
        return GenerationConfig.from_pretrained(model_path, local_files_only=True)
    except OSError:
        config = transformers.AutoConfig.from_pretrained(model_path, local_files_only=True)
        return GenerationConfig.from_model_config(config)


def load_exported_t5(
    model_path: Path,
    backend: Backend,
    options: BackendOptions,
    tokens: DecodingTokens,
    torch_generate: Callable[[T5ForConditionalGeneration], GreedyGenerate],
) -> ExportedGreedy:
    """The export of the T5 at ``model_path``: from the cache, else exported and checked
    against ``torch_generate`` (how the torch backend decodes) of the torch model."""
    started = time.perf_counter()
    entry = cached_export(
        options,
        model_path.name,
        backend,
        model_path,
        EXPORT_FORMAT,
        lambda directory: export_t5(
            model_path, backend, directory, options, tokens, torch_generate
        ),
    )
    greedy = ExportedGreedy(entry, backend, options, tokens)
    log.info(
        "exported summarization model loaded",
        extra={
            "backend": backend,
            "entry": str(entry.path),
            "token_agreement": greedy.token_agreement,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return greedy


def export_t5(
    model_path: Path,
    backend: Backend,
    directory: Path,
    options: BackendOptions,
    tokens: DecodingTokens,
    torch_generate: Callable[[T5ForConditionalGeneration], GreedyGenerate],
) -> dict[str, object]:
    started = time.perf_counter()
    model = T5ForConditionalGeneration.from_pretrained(model_path, local_files_only=True).eval()
    unsupported = {
        name: getattr(model.generation_config, name, neutral)
        for name, neutral in NEUTRAL_GENERATION.items()
        if getattr(model.generation_config, name, neutral) not in (neutral, None, [])
    }
    if unsupported:
        raise ValueError(f"{model_path.name}: greedy export does not implement {unsupported}")
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    layers = len(model.decoder.block)
    attention = model.decoder.block[0].layer[0].SelfAttention
    heads, head_size = attention.n_heads, attention.key_value_proj_dim
    example = tokenizer(list(SUMMARY_TEXTS[:2]), padding=True, return_tensors="pt")
    encoder = EncoderGraph(model)
    with torch.no_grad():
        cross = encoder(example.input_ids, example.attention_mask)
    cross_names, past_names = _cache_names("cross", layers), _cache_names("past", layers)
    rows = {0: "batch"}
    export_graph(
        Graph(
            name="encoder",
            module=encoder,
            example=(example.input_ids, example.attention_mask),
            inputs=["input_ids", "attention_mask"],
            outputs=cross_names,
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                **{name: {0: "batch", 2: "tokens"} for name in cross_names},
            },
        ),
        backend,
        directory,
    )
    past = tuple(torch.zeros(2, heads, 3, head_size) for _ in past_names)
    present_names = _cache_names("present", layers)
    export_graph(
        Graph(
            name="decoder",
            module=DecoderStepGraph(model),
            example=(
                torch.full((2, 1), tokens.start, dtype=torch.long),
                example.attention_mask,
                *cross,
                *past,
            ),
            inputs=["input_ids", "encoder_attention_mask", *cross_names, *past_names],
            outputs=["logits", *present_names],
            dynamic_axes={
                "input_ids": rows,
                "encoder_attention_mask": {0: "batch", 1: "tokens"},
                "logits": rows,
                **{name: {0: "batch", 2: "tokens"} for name in cross_names},
                **{name: {0: "batch", 2: "steps"} for name in past_names},
                **{name: {0: "batch", 2: "steps_and_one"} for name in present_names},
            },
        ),
        backend,
        directory,
    )
    meta: dict[str, object] = {
        "model": model_path.name,
        "backend": backend,
        "layers": layers,
        "heads": heads,
        "head_size": head_size,
        "token_agreement": 0.0,
    }
    candidate = ExportedGreedy(Entry(directory, meta), backend, options, tokens)
    reference = torch_generate(model)
    encoded = tokenizer(list(SUMMARY_TEXTS), padding=True, return_tensors="np")
    expected, got = [], []
    for max_new, min_new in SUMMARY_LENGTHS:
        for generate, out in ((reference, expected), (candidate.generate, got)):
            rows_out = generate(encoded["input_ids"], encoded["attention_mask"], max_new, min_new)
            out += [until_eos(row, tokens.eos) for row in rows_out]
    meta["token_agreement"] = check_tokens(backend, expected, got)
    log.info(
        "summarization model exported",
        extra={
            "backend": backend,
            "model": model_path.name,
            "token_agreement": meta["token_agreement"],
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return meta
