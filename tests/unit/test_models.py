"""Model catalogue, KV bytes per token (whole model and per TP rank), user models, geometry."""

from __future__ import annotations

import math

import pytest

from mpi_kvbench import models
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.layout import Geometry, chunk_keys
from mpi_kvbench.models import CATALOGUE, ModelSpec

# DESIGN.md section 9, copied from the brief (not from the code):
# key: (layers, kv_heads, head_dim, kind, bytes/token)
DESIGN_TABLE = {
    "tiny-1b": (12, 4, 128, "gqa", 24_576),
    "mistral-7b": (32, 8, 128, "gqa", 131_072),
    "llama2-7b": (32, 32, 128, "mha", 524_288),
    "llama3.1-8b": (32, 8, 128, "gqa", 131_072),
    "llama3.1-70b-instruct": (80, 8, 128, "gqa", 327_680),
    "deepseek-v3": (61, None, None, "mla", 70_272),     # 512 + 64 latent
    "qwen3-32b": (64, 8, 128, "gqa", 262_144),
    "gpt-oss-120b": (36, 8, 64, "gqa", 73_728),
    "gpt-oss-20b": (24, 8, 64, "gqa", 49_152),
}
FP16 = 2
TPS = (1, 2, 4, 8, 16)


def formula(layers: int, kv_heads: int | None, head_dim: int | None, kind: str,
            dtype_bytes: int = FP16, latent: int = 512 + 64) -> int:
    """DESIGN.md section 3: MHA/GQA K and V per head; MLA one latent (no x2)."""
    if kind == "mla":
        return layers * latent * dtype_bytes
    return layers * kv_heads * head_dim * 2 * dtype_bytes


def test_catalogue_is_exactly_the_nine_design_models() -> None:
    assert set(CATALOGUE) == set(DESIGN_TABLE)
    assert len(CATALOGUE) == 9


@pytest.mark.parametrize("name", sorted(DESIGN_TABLE))
def test_bytes_per_token_match_design_table_and_formula(name: str) -> None:
    layers, kv_heads, head_dim, kind, table_bytes = DESIGN_TABLE[name]
    assert formula(layers, kv_heads, head_dim, kind) == table_bytes   # the table is self-consistent
    spec = models.resolve(name)
    assert spec.bytes_per_token == table_bytes
    assert spec.layers == layers
    assert spec.kind == kind
    assert spec.dtype == "fp16"
    if kind != "mla":
        assert (spec.kv_heads, spec.head_dim) == (kv_heads, head_dim)


def expected_heads(kv_heads: int, tp: int) -> int | None:
    """Heads one rank holds: kv_heads / T, or 1 (replicated) when T is a multiple of kv_heads;
    None when T fits neither way."""
    if tp <= kv_heads:
        return kv_heads // tp if kv_heads % tp == 0 else None
    return 1 if tp % kv_heads == 0 else None


@pytest.mark.parametrize("tp", TPS)
@pytest.mark.parametrize("name", sorted(DESIGN_TABLE))
def test_per_rank_shard(name: str, tp: int) -> None:
    layers, kv_heads, head_dim, kind, table_bytes = DESIGN_TABLE[name]
    spec = models.resolve(name)
    if kind == "mla":
        spec.check_tp(tp)
        assert spec.bytes_per_token_per_rank(tp) == table_bytes   # the latent is never split
        return
    heads = expected_heads(kv_heads, tp)
    if heads is None:
        with pytest.raises(ConfigError):
            spec.check_tp(tp)
        return
    spec.check_tp(tp)
    assert spec.heads_per_rank(tp) == heads
    assert spec.bytes_per_token_per_rank(tp) == formula(layers, heads, head_dim, kind)
    assert spec.bytes_per_token_per_rank(tp) * min(tp, kv_heads) == table_bytes


def test_named_shard_examples() -> None:
    l8 = models.resolve("llama3.1-8b")
    assert l8.heads_per_rank(8) == 1
    assert l8.bytes_per_token_per_rank(8) == 131_072 // 8 == 16_384
    assert l8.bytes_per_token_per_rank(16) == l8.bytes_per_token_per_rank(8)   # replicated
    l2 = models.resolve("llama2-7b")
    assert l2.heads_per_rank(4) == 8
    assert l2.bytes_per_token_per_rank(4) == 524_288 // 4
    tiny = models.resolve("tiny-1b")
    assert tiny.bytes_per_token_per_rank(8) == 24_576 // 4   # 4 heads: one per rank from TP 4
    ds = models.resolve("deepseek-v3")
    assert {ds.bytes_per_token_per_rank(t) for t in (1, 2, 3, 8, 16, 64)} == {70_272}


@pytest.mark.parametrize("tp", [3, 5, 6, 7, 12, 20, 0, -1])
def test_invalid_tp_for_eight_heads_raises(tp: int) -> None:
    with pytest.raises(ConfigError, match="tensor_parallel"):
        models.resolve("llama3.1-8b").check_tp(tp)


@pytest.mark.parametrize("tp", [0, -2])
def test_mla_still_needs_a_positive_tp(tp: int) -> None:
    with pytest.raises(ConfigError):
        models.resolve("deepseek-v3").check_tp(tp)


@pytest.mark.parametrize("dtype,nbytes", [("fp32", 4), ("fp16", 2), ("bf16", 2), ("fp8", 1)])
def test_user_gqa_model(dtype: str, nbytes: int) -> None:
    section = {"layers": 40, "kv_heads": 8, "head_dim": 128, "dtype": dtype}
    spec = models.resolve("my-13b", {"my-13b": section})
    assert spec.kind == "gqa"
    assert spec.bytes_per_token == 40 * 8 * 128 * 2 * nbytes
    assert spec.bytes_per_token_per_rank(4) == 40 * 2 * 128 * 2 * nbytes
    spec.check_tp(8)
    with pytest.raises(ConfigError):
        spec.check_tp(3)


@pytest.mark.parametrize("dtype,nbytes", [("fp32", 4), ("bf16", 2), ("fp8", 1)])
def test_user_mla_model(dtype: str, nbytes: int) -> None:
    section = {"kind": "mla", "layers": 27, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
               "dtype": dtype}
    spec = models.resolve("my-mla", {"my-mla": section})
    assert spec.kind == "mla"
    assert spec.bytes_per_token == 27 * 576 * nbytes
    for tp in TPS:
        spec.check_tp(tp)
        assert spec.bytes_per_token_per_rank(tp) == 27 * 576 * nbytes


def test_user_mla_kind_is_inferred_from_the_latent() -> None:
    spec = models.resolve("m", {"m": {"layers": 2, "kv_lora_rank": 100, "qk_rope_head_dim": 28}})
    assert spec.kind == "mla" and spec.bytes_per_token == 2 * 128 * 2


def test_user_model_beside_catalogue_keeps_catalogue() -> None:
    user = {"mine": {"layers": 1, "kv_heads": 1, "head_dim": 8}}
    assert models.resolve("llama3.1-8b", user).bytes_per_token == 131_072
    assert models.resolve("mine", user).bytes_per_token == 1 * 1 * 8 * 2 * 2


@pytest.mark.parametrize("section,field", [
    ({"layers": 4, "kv_heads": 2, "head_dim": 64, "heads": 3}, "heads"),             # unknown
    ({"layers": "4", "kv_heads": 2, "head_dim": 64}, "layers"),                       # str
    ({"layers": 4.5, "kv_heads": 2, "head_dim": 64}, "layers"),                       # float
    ({"layers": True, "kv_heads": 2, "head_dim": 64}, "layers"),                      # bool
    ({"layers": 4, "kv_heads": 0, "head_dim": 64}, "kv_heads"),                       # zero
    ({"layers": 4, "kv_heads": 2, "head_dim": -64}, "head_dim"),                      # negative
    ({"layers": 4, "head_dim": 64}, "kv_heads"),                                      # missing
    ({"layers": 0, "kv_heads": 2, "head_dim": 64}, "layers"),
    ({"layers": 4, "kv_heads": 2, "head_dim": 64, "dtype": "fp64"}, "dtype"),
    ({"layers": 4, "kv_heads": 2, "head_dim": 64, "kind": "rnn"}, "kind"),
    ({"kind": "mla", "layers": 4, "kv_lora_rank": 512}, "qk_rope_head_dim"),
    ({"kind": "mla", "layers": 4, "qk_rope_head_dim": 64}, "kv_lora_rank"),
])
def test_user_model_errors_name_the_field(section: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        models.resolve("bad", {"bad": section})
    msg = str(err.value)
    assert f"models.bad.{field}" in msg
    assert "\n" not in msg


def test_user_model_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="models.bad"):
        models.resolve("bad", {"bad": [1, 2]})


def test_unknown_model_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="llama3.1-8b") as err:
        models.resolve("llama3.1-8")
    assert "model.name" in str(err.value)


# ---- geometry ---------------------------------------------------------------------------


def roundup4k(n: int) -> int:
    return math.ceil(n / 4096) * 4096


@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("chunk_tokens", [1, 7, 16, 256])
@pytest.mark.parametrize("name", ["tiny-1b", "llama2-7b", "deepseek-v3", "gpt-oss-20b"])
def test_object_bytes_per_rank(name: str, chunk_tokens: int, tp: int) -> None:
    spec = models.resolve(name)
    layers, kv_heads, head_dim, kind, _ = DESIGN_TABLE[name]
    if kind == "mla":
        per_rank = formula(layers, None, None, kind)
    else:
        heads = expected_heads(kv_heads, tp)
        if heads is None:
            pytest.skip("TP does not fit the model")
        per_rank = formula(layers, heads, head_dim, kind)
    geo = Geometry(spec, chunk_tokens, tp)
    assert geo.objects_per_chunk == 1
    assert geo.payload_bytes == chunk_tokens * per_rank
    assert geo.object_bytes == roundup4k(chunk_tokens * per_rank)
    assert geo.object_bytes % 4096 == 0
    assert 0 <= geo.object_bytes - geo.payload_bytes < 4096


def test_odd_object_is_rounded_up_to_a_page() -> None:
    spec = ModelSpec("odd", layers=3, kind="gqa", kv_heads=1, head_dim=10)   # 120 B/token
    geo = Geometry(spec, 5, 1)
    assert geo.payload_bytes == 600
    assert geo.object_bytes == 4096
    geo = Geometry(spec, 35, 1)          # 4200 bytes -> two pages
    assert geo.object_bytes == 8192


@pytest.mark.parametrize("tp", [1, 4, 8])
@pytest.mark.parametrize("name", ["llama3.1-8b", "deepseek-v3", "tiny-1b"])
def test_layer_layout(name: str, tp: int) -> None:
    spec = models.resolve(name)
    chunk = Geometry(spec, 256, tp)
    layer = Geometry(spec, 256, tp, layout="layer")
    assert layer.objects_per_chunk == spec.layers
    assert layer.payload_bytes * spec.layers == chunk.payload_bytes
    assert layer.object_bytes == roundup4k(256 * spec.bytes_per_token_per_rank(tp) // spec.layers)
    keys = chunk_keys([(1, 256 * 3 + 10)], 256)
    assert len(keys) == 3
    assert chunk.object_keys(keys) == keys
    objs = layer.object_keys(keys)
    assert len(objs) == 3 * spec.layers
    assert len(set(objs)) == len(objs)
    assert not set(objs) & set(keys)
    # the objects of chunk i come as one run of `layers` keys, in chunk order
    for i, k in enumerate(keys):
        again = layer.object_keys([k])
        assert objs[i * spec.layers:(i + 1) * spec.layers] == again
