"""T5 text encoders for the T2I stage: Flan-T5-XXL (the paper's) and T5 v1.1 XXL (official code's).

Captions (and long captions) from the images table, cleaned as official Lumos by default (captions.py; a
caption that cleans to nothing counts as no caption), at most 120 tokens (EOS included), encoded in fp32 or
bf16 (never fp16: T5 overflows to NaN) and checked for NaN/inf. Only the valid token vectors are stored,
fp16, with the length: padded, a caption would cost 120 × 4096 × 2 = 983 KB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lumos.floor.errors import UserError
from lumos.floor.model_loading import quiet_loading
from lumos.pipeline.encoders.base import Encoder, missing_weights
from lumos.pipeline.encoders.captions import cleaner
from lumos.schemas import features
from lumos.schemas import images as cols

MAX_TOKENS = 120  # PixArt-α / Lumos
# T5-XXL's encoder (Flan-T5-XXL and T5 v1.1 XXL share it): random-weight tests need no download.
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
              relative_attention_max_distance=128, dropout_rate=0.0, layer_norm_epsilon=1e-6,
              tie_word_embeddings=False, is_encoder_decoder=False)
# The `tiny-t5` test encoder: same family, byte-level vocabulary (ByT5Tokenizer needs no files), tiny widths.
# Its width (32) differs from tiny-dino's (64) on purpose: T2I from I2I must re-initialise the caption projection.
TINY_T5 = {**T5_XXL, "vocab_size": 384, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}


@dataclass
class T5Encoder(Encoder):
    hub_id: str | None = "google/flan-t5-xxl"  # None: the seeded tiny test model
    arch: dict | None = None  # the T5 config built with random weights (default T5_XXL; tests pass small ones)
    max_tokens: int = MAX_TOKENS
    clean_captions: str = "none"  # official | none (captions.py); the registry passes lumos-encode's choice
    _tokenizer: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.clean = cleaner(self.clean_captions)  # an unknown mode, or official's libraries missing: one line

    @property
    def config(self) -> dict:
        return TINY_T5 if self.hub_id is None else (self.arch or T5_XXL)

    @property
    def dim(self) -> int:
        return self.config["d_model"]

    def captions(self) -> list[tuple[str, str, str]]:
        """(images-table caption column, tokens column, length column)."""
        return [(cols.CAPTION, features.tokens_column(self.name), features.len_column(self.name)),
                (cols.LONG_CAPTION, features.long_tokens_column(self.name), features.long_len_column(self.name))]

    def inputs(self) -> list[str]:
        return [caption for caption, _, _ in self.captions()]

    def fields(self) -> list[pa.Field]:
        return [f for _, tokens, length in self.captions()
                for f in (features.token_list_field(tokens, self.dim), features.length_field(length))]

    # --- CPU: tokenize ---
    def tokenizer(self):
        if self._tokenizer is None:
            if self.hub_id is None or self.random_weights:  # no tokenizer files either: bytes as tokens
                from transformers import ByT5Tokenizer

                self._tokenizer = ByT5Tokenizer()
            else:
                from transformers import AutoTokenizer

                source = self.weights or self.hub_id
                try:
                    with quiet_loading():
                        self._tokenizer = AutoTokenizer.from_pretrained(source)
                except Exception as err:  # noqa: BLE001
                    raise missing_weights(f"the text encoder {self.name}", source, err) from None
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Captions → token ids (n, max_tokens), padded, cut at max_tokens (EOS included), and lengths (n,)."""
        tok = self.tokenizer()(texts, max_length=self.max_tokens, padding="max_length", truncation=True,
                               return_tensors="np")
        return tok["input_ids"], tok["attention_mask"].sum(1)

    def encode_texts(self, texts: list[str]) -> list[np.ndarray | None]:
        """In-process, for samplers: captions → per caption its valid tokens (len, D) fp16 (None: not finite),
        cleaned, tokenized and computed exactly as the encode job does."""
        import torch

        texts = [self.clean(t) for t in texts]
        for t in texts:
            if not t.strip():
                raise UserError(f"a prompt is empty after caption cleaning ({self.clean_captions}, as the run's "
                                "features were made): say what the image shows in words")
        ids, lengths = self.tokenize(texts)
        return self.forward(torch.from_numpy(ids.astype(np.int64)).to(self.device),
                            torch.from_numpy(lengths.astype(np.int64)).to(self.device))

    def prepare(self, batch: pa.Table) -> pa.Table:
        """Captions → in-flight token ids and counts (the caption columns stay: other encoders may read them)."""
        for caption, _, _ in self.captions():
            texts = [t and self.clean(t) for t in batch[caption].to_pylist()]
            ok = np.array([bool(t and t.strip()) for t in texts])
            ids = np.zeros((len(texts), self.max_tokens), np.int32)
            lengths = np.zeros(len(texts), np.int32)
            if ok.any():
                ids[ok], lengths[ok] = self.tokenize([t for t, good in zip(texts, ok) if good])
            batch = batch.append_column(features.token_ids_column(self.name, caption),
                                        pa.FixedSizeListArray.from_arrays(pa.array(ids.reshape(-1)), self.max_tokens,
                                                                          mask=pa.array(~ok)))
            batch = batch.append_column(features.token_count_column(self.name, caption),
                                        pa.array(lengths, pa.int32(), mask=~ok))
        return batch

    # --- model ---
    def check(self) -> None:
        if self.hub_id is None or self.random_weights:
            return
        self.tokenizer()
        source = self.weights or self.hub_id
        try:  # the config, not the 19 GB of weights: those load in the actors
            from transformers import AutoConfig

            with quiet_loading():
                AutoConfig.from_pretrained(source)
        except Exception as err:  # noqa: BLE001
            raise missing_weights(f"the text encoder {self.name}", source, err) from None
        if os.path.isdir(source) and not any(f.endswith((".safetensors", ".bin")) for f in os.listdir(source)):
            raise missing_weights(f"the text encoder {self.name}", source, FileNotFoundError("no weight files"))

    def build(self):
        import torch
        from transformers import T5Config, T5EncoderModel

        if self.hub_id is None or self.random_weights:
            torch.manual_seed(0)
            return T5EncoderModel(T5Config(**self.config))
        source = self.weights or self.hub_id
        try:
            with quiet_loading():
                return T5EncoderModel.from_pretrained(source, dtype=torch.float32)
        except Exception as err:  # noqa: BLE001
            raise missing_weights(f"the text encoder {self.name}", source, err) from None

    def forward(self, ids, lengths) -> list[np.ndarray | None]:
        """(N, 120) token ids, (N,) lengths → per row its valid tokens (len, D) fp16, None where not finite."""
        import torch

        longest = int(lengths.max())
        ids = ids[:, :longest]  # padding past the longest caption changes nothing: it is masked
        mask = torch.arange(longest, device=ids.device)[None] < lengths[:, None]
        with torch.inference_mode(), self.autocast():
            hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()  # (N, L, D)
        rows = []
        for i, n in enumerate(lengths.tolist()):
            valid = hidden[i, :n]
            rows.append(valid.half().cpu().numpy() if bool(torch.isfinite(valid).all()) else None)
        return rows

    def in_flight(self) -> list[str]:
        return [c for caption, _, _ in self.captions() for c in (features.token_ids_column(self.name, caption),
                                                                 features.token_count_column(self.name, caption))]

    def encode(self, batch: pa.Table) -> dict[str, pa.Array]:
        """Per caption: its valid tokens and its length (null: no caption; 0: output not finite, not stored)."""
        import torch

        out = {}
        for caption, tokens, length in self.captions():
            lengths = batch[features.token_count_column(self.name, caption)].combine_chunks()
            ok = pc.is_valid(lengths).to_numpy(zero_copy_only=False)
            rows: list[np.ndarray | None] = [None] * batch.num_rows
            if ok.any():
                ids = batch.filter(pa.array(ok))[features.token_ids_column(self.name, caption)].combine_chunks()
                ids = torch.from_numpy(ids.flatten().to_numpy().reshape(-1, self.max_tokens).astype(np.int64))
                valid = torch.from_numpy(lengths.filter(pa.array(ok)).to_numpy().astype(np.int64))
                for i, row in zip(np.flatnonzero(ok), self.forward(ids.to(self.device), valid.to(self.device))):
                    rows[i] = row
            stored = np.array([r is not None for r in rows])
            n = np.where(stored, lengths.fill_null(0).to_numpy(zero_copy_only=False), 0).astype(np.int32)
            out[tokens] = token_lists(rows, self.dim)
            out[length] = pa.array(n, pa.int32(), mask=~ok)
        return out

    def tally(self) -> list[tuple[str, str]]:
        (_, _, length), (_, _, long_length) = self.captions()
        return [("no_caption", f"{length} IS NULL"), ("no_long_caption", f"{long_length} IS NULL"),
                ("not_finite", f"{length} = 0"), ("not_finite", f"{long_length} = 0")]

    def describe(self) -> dict:
        return {"weights": self.hub_id or "tiny-t5 (seeded random test model)",
                "tokenizer": "byt5 (bytes)" if self.hub_id is None or self.random_weights else self.hub_id,
                "max_tokens": self.max_tokens, "captions": self.inputs(), "stored": "valid tokens and length",
                # named when on: tables made before the option (uncleaned) have no such key
                **({"clean_captions": self.clean_captions} if self.clean_captions != "none" else {})}


def token_lists(rows: list[np.ndarray | None], dim: int) -> pa.LargeListArray:
    """Per row a (len, D) fp16 array or None → large_list<halffloat> of len × D values (64-bit offsets), null
    for None. The values are copied once, into one buffer that Arrow then wraps without a copy."""
    sizes = np.array([0 if r is None else r.size for r in rows], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    values = np.empty(int(offsets[-1]), np.float16)
    for r, start, size in zip(rows, offsets[:-1], sizes):
        if size:
            values[start:start + size] = np.asarray(r, np.float16).reshape(-1)
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float16()),
                                         mask=pa.array([r is None for r in rows]))
