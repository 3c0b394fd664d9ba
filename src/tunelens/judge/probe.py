"""The learned judge: a small multinomial logistic head over features of a fixed, frozen judge encoder.

Why a probe. Rules read words; a reply's intent ("here is how" after "I won't") is spread over its sentences in a
way lists of phrases keep missing. A frozen small LM's hidden states carry that intent, and a linear head over
them, trained on a few hundred labelled replies, separates refusal / partial / compliance / degenerate far
better than the phrase lists, at the cost of one batched forward per reply.

Why this encoder. The judge must not move with the models it judges, so its encoder is the embedded default
model (SmolLM2-135M-Instruct), frozen, never either model under audit; the first `layers` decoder layers run,
the rest are dropped (the middle layers carry the most linearly readable intent, and half the layers is half the
cost). The encoder's weights hash is stored in the head and checked when the head loads: a head trained for
other weights refuses to run instead of judging silently wrong.

Input: "\\nReply: <reply>", its first REPLY_TOKENS tokens (refusals and their turns show early), optionally after
"Request: <request>" (REQUEST_TOKENS; 0, the default, leaves the request out: cross-validation found it added
nothing the rule features do not, and it tripled the tokens). Features: the mean of the reply tokens' hidden
states at the last kept layer, and the mean over its first FIRST_TOKENS tokens (how the reply opens).

Two heads ship in one safetensors file: "probe" over the encoder features alone, and "combined" over those
plus the rule features (rules.features) — the default judge, "rules+probe" (see judge/__init__.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from ..errors import TunelensError
from . import rules as R

# chosen by 5-fold cross-validation over the training part (docs/judge.md): the reply alone scored as well as the
# reply after its request (0.958 vs 0.955), at a third of the tokens; 12 layers as well as 16, at 3/4 of the cost
REQUEST_TOKENS = 0
REPLY_TOKENS = 32
FIRST_TOKENS = 8
LAYERS = 12
MEMO = 8192  # features kept per process (a 576-dim pair of means is 4.6 KB: 38 MB at most)
CLASSES = list(R.VERDICTS)
RULE_FEATURES = list(R.features("x"))


class Encoder:
    """The frozen judge encoder: the embedded default model cut to its first `layers` decoder layers."""

    def __init__(self, layers: int = LAYERS, handle=None, request_tokens: int = REQUEST_TOKENS,
                 reply_tokens: int = REPLY_TOKENS):
        from ..models import resolve_model

        h = handle or resolve_model("default")
        self.tokenizer = h.tokenizer
        model = h.model
        backbone = model.model if hasattr(model, "model") else model
        if not hasattr(backbone, "layers") or len(backbone.layers) < layers:
            raise TunelensError(f"judge encoder: the model has no {layers} decoder layers to read features from")
        self.layers, self.request_tokens, self.reply_tokens = layers, request_tokens, reply_tokens
        self.weights_sha256 = weights_hash(backbone, layers)
        backbone.layers = backbone.layers[:layers]  # the rest never run
        if hasattr(backbone.config, "num_hidden_layers"):
            backbone.config.num_hidden_layers = layers
        self.backbone = backbone.eval().requires_grad_(False)
        self.dim = int(backbone.config.hidden_size)
        self._memo: dict = {}

    def encode_pairs(self, requests: list[str | None], replies: list[str]) -> tuple[list[list[int]], list[int]]:
        from ..scoring import encode

        rows, starts = [], []
        for q, r in zip(requests, replies):
            head = encode(self.tokenizer, "Request: " + (q or ""))[: self.request_tokens] if self.request_tokens else []
            body = encode(self.tokenizer, "\nReply: " + (r or ""))[: self.reply_tokens + 3]
            rows.append(head + body)
            starts.append(len(head) + 3)  # the reply's own tokens start after "\nReply:"; ≥1 token always
        return rows, starts

    @torch.no_grad()
    def features(self, requests: list[str | None], replies: list[str], batch_size: int = 64,
                 progress=None) -> np.ndarray:
        """[n, 2*dim] float32: mean over the reply's tokens and mean over its first FIRST_TOKENS tokens. Pairs seen
        before (the card's replies judged by two heads, a reply judged twice) come from a small memo."""
        keys = [(q if self.request_tokens else None, r) for q, r in zip(requests, replies)]
        todo = [i for i, k in enumerate(keys) if k not in self._memo]
        if todo:
            fresh = self._features([requests[i] for i in todo], [replies[i] for i in todo], batch_size, progress)
            for i, f in zip(todo, fresh):
                if len(self._memo) >= MEMO:
                    self._memo.pop(next(iter(self._memo)))
                self._memo[keys[i]] = f
        return np.stack([self._memo[k] for k in keys]) if keys else np.zeros((0, 2 * self.dim), np.float32)

    def _features(self, requests, replies, batch_size, progress) -> np.ndarray:
        rows, starts = self.encode_pairs(requests, replies)
        out = np.zeros((len(rows), 2 * self.dim), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths share a batch: less padding
        pad = self.tokenizer.pad_token_id or 0
        for a in range(0, len(order), batch_size):
            idx = order[a: a + batch_size]
            width = max(len(rows[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(rows[i])] = torch.tensor(rows[i])
                mask[j, : len(rows[i])] = 1
            hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            for j, i in enumerate(idx):
                s, e = min(starts[i], len(rows[i]) - 1), len(rows[i])
                h = hidden[j, s:e]
                out[i, : self.dim] = h.mean(0).numpy()
                out[i, self.dim:] = h[:FIRST_TOKENS].mean(0).numpy()
            if progress:
                progress(min(a + batch_size, len(order)), len(order))
        return out


def weights_hash(backbone, layers: int) -> str:
    """sha256 over the names, shapes and bytes of the embedding and the first `layers` layers' tensors."""
    h = hashlib.sha256()
    for name, t in backbone.state_dict().items():
        if name.startswith("layers."):
            if int(name.split(".")[1]) >= layers:
                continue
        elif not name.startswith("embed_tokens"):
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def rule_matrix(requests, replies, labels=None) -> np.ndarray:
    rows = []
    for q, r in zip(requests, replies):
        f = R.features(r, labels, q)
        v = R.judge(r, labels, q)[0]
        rows.append([f[k] for k in RULE_FEATURES] + [float(v == c) for c in CLASSES])
    return np.array(rows, dtype=np.float32).reshape(len(rows), len(RULE_FEATURES) + len(CLASSES))


class Head:
    """Standardise, then softmax(W x + b). Fitted by L-BFGS on cross-entropy + l2/2 ||W||² (deterministic)."""

    def __init__(self, mean, std, weight, bias):
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.weight, self.bias = np.asarray(weight, np.float32), np.asarray(bias, np.float32)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float, *, iters: int = 300,
            class_weight: np.ndarray | None = None) -> "Head":
        mean = x.mean(0)
        std = x.std(0) + 1e-4
        z = torch.tensor((x - mean) / std, dtype=torch.float64)
        t = torch.tensor(y, dtype=torch.long)
        k = len(CLASSES)
        w = torch.zeros((k, z.shape[1]), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        cw = None if class_weight is None else torch.tensor(class_weight, dtype=torch.float64)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, tolerance_grad=1e-9, tolerance_change=1e-12,
                                history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(z @ w.T + b, t, weight=cw) + 0.5 * l2 * (w * w).sum() / len(t)
            loss.backward()
            return loss

        opt.step(closure)
        return cls(mean, std, w.detach().numpy(), b.detach().numpy())

    def proba(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        logits = z @ self.weight.T + self.bias
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def tensors(self, prefix: str) -> dict:
        return {f"{prefix}.{k}": torch.tensor(getattr(self, k)) for k in ("mean", "std", "weight", "bias")}


def save_heads(path: Path, heads: dict[str, Head], meta: dict) -> None:
    from safetensors.torch import save

    from ..io import atomic_open

    tensors = {}
    for name, head in heads.items():
        tensors.update(head.tensors(name))
    with atomic_open(path, "wb") as f:
        f.write(save(tensors, metadata={"tunelens": json.dumps(meta, sort_keys=True)}))


def load_heads(path: Path) -> tuple[dict[str, Head], dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise TunelensError(f"{path}: the judge's probe head is missing (reinstall tunelens, or retrain it with "
                            "`python -m tunelens.judge.train`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("tunelens", "{}"))
            names = {k.split(".")[0] for k in f.keys()}
            heads = {n: Head(*(f.get_tensor(f"{n}.{k}").numpy() for k in ("mean", "std", "weight", "bias")))
                     for n in names}
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise TunelensError(f"{path}: not a readable probe head ({e})") from None
    return heads, meta


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
