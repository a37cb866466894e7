"""T5 text encoders for the T2I stage: Flan-T5-XXL (the paper's) and T5 v1.1 XXL (official code's).

Captions (and long captions) from the images table, at most 120 tokens (EOS included), encoded in fp32 or
bf16 (never fp16: T5 overflows to NaN) and checked for NaN/inf. Only the valid token vectors are stored,
fp16, with the length: padded, a caption would cost 120 × 4096 × 2 = 983 KB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lumos.floor.model_loading import quiet_loading
from lumos.pipeline.encoders.base import Encoder, missing_weights
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
    _tokenizer: object = field(default=None, init=False, repr=False)

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
        tokenized and computed exactly as the encode job does."""
        import torch

        ids, lengths = self.tokenize(texts)
        return self.forward(torch.from_numpy(ids.astype(np.int64)).to(self.device),
                            torch.from_numpy(lengths.astype(np.int64)).to(self.device))

    def prepare(self, batch: pa.Table) -> pa.Table:
        for caption, _, length in self.captions():
            texts = batch[caption].to_pylist()
            ok = np.array([bool(t and t.strip()) for t in texts])
            ids = np.zeros((len(texts), self.max_tokens), np.int32)
            lengths = np.zeros(len(texts), np.int32)
            if ok.any():
                ids[ok], lengths[ok] = self.tokenize([t for t, good in zip(texts, ok) if good])
            batch = batch.drop_columns([caption])
            batch = batch.append_column(features.token_ids_column(caption), pa.FixedSizeListArray.from_arrays(
                pa.array(ids.reshape(-1)), self.max_tokens, mask=pa.array(~ok)))
            batch = batch.append_column(length, pa.array(lengths, pa.int32(), mask=~ok))
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

    def encode(self, batch: pa.Table) -> pa.Table:
        import torch

        out = pa.table({cols.ID: batch[cols.ID], features.SHARD: batch[features.SHARD]})
        for caption, tokens, length in self.captions():
            ok = pc.is_valid(batch[length]).to_numpy(zero_copy_only=False)
            rows: list[np.ndarray | None] = [None] * batch.num_rows
            if ok.any():
                ids = batch.filter(pa.array(ok))[features.token_ids_column(caption)].combine_chunks()
                ids = torch.from_numpy(ids.flatten().to_numpy().reshape(-1, self.max_tokens).astype(np.int64))
                lengths = torch.from_numpy(batch.filter(pa.array(ok))[length].to_numpy().astype(np.int64))
                for i, row in zip(np.flatnonzero(ok), self.forward(ids.to(self.device), lengths.to(self.device))):
                    rows[i] = row
            out = out.append_column(tokens, token_lists(rows, self.dim)).append_column(length, batch[length])
        return out

    def tally(self, rows: pa.Table) -> dict[str, int]:
        (_, tokens, length), (_, long_tokens, long_length) = self.captions()
        return {"no_caption": rows[length].null_count, "no_long_caption": rows[long_length].null_count,
                "not_finite": rows[tokens].null_count - rows[length].null_count
                + rows[long_tokens].null_count - rows[long_length].null_count}

    def describe(self) -> dict:
        return {"weights": self.hub_id or "tiny-t5 (seeded random test model)",
                "tokenizer": "byt5 (bytes)" if self.hub_id is None or self.random_weights else self.hub_id,
                "max_tokens": self.max_tokens, "captions": self.inputs(), "stored": "valid tokens and length"}


def token_lists(rows: list[np.ndarray | None], dim: int) -> pa.ListArray:
    """Per row a (len, D) fp16 array or None → list<halffloat> of len × D values, null for None."""
    flat = [np.zeros(0, np.float16) if r is None else r.reshape(-1) for r in rows]
    values = pa.array(np.concatenate(flat) if flat else np.zeros(0, np.float16), pa.float16())
    offsets = pa.array(np.concatenate([[0], np.cumsum([len(f) for f in flat])]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array([r is None for r in rows]))
