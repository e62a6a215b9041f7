"""Model catalogue and KV bytes per token, whole model and per tensor-parallel rank.

The nine built-in models carry the bytes per token of DESIGN.md section 9; users add
their own in the config's ``models:`` section.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpi_kvbench.errors import ConfigError
from mpi_kvbench.params import coerce, did_you_mean

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}
MLA_MODES = ("replica_per_rank", "one_writer")


@dataclass(frozen=True)
class ModelSpec:
    """Attention geometry; ``kind`` is "mha", "gqa" or "mla"."""

    name: str
    layers: int
    kind: str
    kv_heads: int = 0
    head_dim: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    dtype: str = "fp16"

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def bytes_per_token(self) -> int:
        """Whole-model KV bytes per token (K and V for MHA/GQA, one latent for MLA)."""
        if self.kind == "mla":
            return self.layers * (self.kv_lora_rank + self.qk_rope_head_dim) * self.dtype_bytes
        return self.layers * self.kv_heads * self.head_dim * 2 * self.dtype_bytes

    def heads_per_rank(self, tp: int) -> int:
        """KV heads one rank holds; heads are replicated (one per rank) when tp > kv_heads."""
        if self.kind == "mla":
            return 0
        return max(1, self.kv_heads // tp)

    def bytes_per_token_per_rank(self, tp: int) -> int:
        """KV bytes per token that one TP rank stores. MLA's latent is never split by head."""
        if self.kind == "mla":
            return self.bytes_per_token
        return self.layers * self.heads_per_rank(tp) * self.head_dim * 2 * self.dtype_bytes

    def check_tp(self, tp: int) -> None:
        if tp < 1:
            raise ConfigError(f"kv.tensor_parallel={tp}: must be a positive integer")
        if self.kind == "mla":
            return
        if tp <= self.kv_heads and self.kv_heads % tp:
            raise ConfigError(
                f"kv.tensor_parallel={tp} does not divide {self.name}'s {self.kv_heads} KV heads;"
                f" use a divisor of {self.kv_heads} or a multiple of it"
            )
        if tp > self.kv_heads and tp % self.kv_heads:
            raise ConfigError(
                f"kv.tensor_parallel={tp} cannot replicate {self.name}'s {self.kv_heads} KV heads"
                f" evenly; use a multiple of {self.kv_heads}"
            )


def _gqa(name: str, layers: int, kv_heads: int, head_dim: int, kind: str = "gqa") -> ModelSpec:
    return ModelSpec(name, layers, kind, kv_heads=kv_heads, head_dim=head_dim)


CATALOGUE: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        _gqa("tiny-1b", 12, 4, 128),
        _gqa("mistral-7b", 32, 8, 128),
        _gqa("llama2-7b", 32, 32, 128, kind="mha"),
        _gqa("llama3.1-8b", 32, 8, 128),
        _gqa("llama3.1-70b-instruct", 80, 8, 128),
        ModelSpec("deepseek-v3", 61, "mla", kv_lora_rank=512, qk_rope_head_dim=64),
        _gqa("qwen3-32b", 64, 8, 128),
        _gqa("gpt-oss-120b", 36, 8, 64),
        _gqa("gpt-oss-20b", 24, 8, 64),
    )
}

MAX_DIM = 1 << 20    # layers, heads, head size: far above any model, far below an overflow
_FIELDS = {
    "layers": int, "kind": str, "kv_heads": int, "head_dim": int,
    "kv_lora_rank": int, "qk_rope_head_dim": int, "dtype": str,
}


def user_model(name: str, section: dict) -> ModelSpec:
    """Builds a model from a ``models: {name: {...}}`` config section, or says what is wrong."""
    if not isinstance(section, dict):
        raise ConfigError(f"models.{name}: expected a mapping of layers, kv_heads, head_dim, ...")
    for key, value in section.items():
        if key not in _FIELDS:
            raise ConfigError(f"models.{name}.{key}: unknown field; valid: {', '.join(_FIELDS)}")
        value = coerce(value, _FIELDS[key], f"models.{name}.{key}")   # 1e3 is an int here too
        section = {**section, key: value}
        if _FIELDS[key] is int and value > MAX_DIM:
            raise ConfigError(f"models.{name}.{key}={value}: too large; give at most {MAX_DIM:,}")
    kind = section.get("kind", "mla" if "kv_lora_rank" in section else "gqa")
    if kind not in ("mha", "gqa", "mla"):
        raise ConfigError(f"models.{name}.kind={kind!r}: use mha, gqa or mla")
    dtype = section.get("dtype", "fp16")
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"models.{name}.dtype={dtype!r}: use one of {', '.join(DTYPE_BYTES)}")
    need = ("layers", "kv_lora_rank", "qk_rope_head_dim") if kind == "mla" else (
        "layers", "kv_heads", "head_dim")
    for key in need:
        if section.get(key, 0) <= 0:
            raise ConfigError(f"models.{name}.{key}: a {kind} model needs a positive {key}")
    return ModelSpec(name=name, **{**section, "kind": kind, "dtype": dtype})


def resolve(name: str, user_models: dict | None = None) -> ModelSpec:
    models = dict(CATALOGUE)
    for key, section in (user_models or {}).items():
        models[key] = user_model(key, section)
    if name not in models:
        raise ConfigError(f"model.name={name!r} is unknown; {did_you_mean(name, models)}"
                          " (see `python -m mpi_kvbench models`)")
    return models[name]
