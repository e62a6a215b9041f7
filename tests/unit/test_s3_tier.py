"""The object-storage tier (kind: s3) against a real S3 server (moto on 127.0.0.1), with
every client library installed here; endpoint and credential resolution without one."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from engine_rig import TINY_OBJ, gb, request

from mpi_kvbench.config import load
from mpi_kvbench.context import RankContext
from mpi_kvbench.engine.payload import stamp
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.layout import aligned_buffer
from mpi_kvbench.registry import TIERS
from mpi_kvbench.tiers import s3

LIBS = s3.installed()
OBJ = 3 * 4096


@pytest.fixture
def server(s3_server, monkeypatch):
    """The session's server, its keys in this process's environment, a fresh bucket."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    for var in ("S3_ENDPOINT_URIS", "S3_ENDPOINT_TEMPLATE", "S3_ENDPOINT_FILE", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    s3_server.bucket = f"b{uuid.uuid4().hex[:10]}"
    s3_server.boto().create_bucket(Bucket=s3_server.bucket)
    return s3_server


def build(server, library: str, capacity: int, obj: int = OBJ, run_id: str = "r1", rank: int = 0,
          **params):
    cls = TIERS.load("s3")
    p = TIERS.params("s3", {"bucket": server.bucket, "endpoints": [server.url],
                            "library": library, **params}, "tiers.object")
    tier = cls(p, capacity, obj, level="object")
    tier.open(RankContext(rank=rank, world_size=2, run_id=run_id))
    return tier


def payload(key: int, obj: int) -> memoryview:
    buf = aligned_buffer(obj)
    np.frombuffer(buf, np.uint8)[:] = np.random.default_rng(key).integers(0, 256, obj, np.uint8)
    stamp(buf, key, 1)
    return buf


# -- endpoints and credentials: where they come from ---------------------------------------

def test_endpoint_sources_in_order_and_template_expansion(tmp_path: Path) -> None:
    f = tmp_path / "eps"
    f.write_text("http://f1:9000\n# a comment\nhttp://f2:9000\n")
    env = {"S3_ENDPOINT_TEMPLATE": "http://10.0.0.{3...5}:9000", "S3_ENDPOINT_FILE": str(f),
           "AWS_ENDPOINT_URL": "http://single:9000"}
    assert s3.endpoints(["http://cfg:1"], "r", env) == (["http://cfg:1"], "endpoints")
    assert s3.endpoints([], "r", env) == (
        ["http://10.0.0.3:9000", "http://10.0.0.4:9000", "http://10.0.0.5:9000"],
        "S3_ENDPOINT_TEMPLATE")
    env["S3_ENDPOINT_URIS"] = "http://a:1, http://b:2"
    assert s3.endpoints([], "r", env) == (["http://a:1", "http://b:2"], "S3_ENDPOINT_URIS")
    assert s3.endpoints([], "r", {"S3_ENDPOINT_FILE": str(f)})[0] == ["http://f1:9000",
                                                                     "http://f2:9000"]
    assert s3.endpoints([], "r", {"AWS_ENDPOINT_URL": "http://x:1"}) == (["http://x:1"],
                                                                         "AWS_ENDPOINT_URL")
    assert s3.endpoints([], "eu-west-3", {}) == (["https://s3.eu-west-3.amazonaws.com"], "aws")


def test_credentials_from_env_else_the_aws_file_profile(tmp_path: Path) -> None:
    f = tmp_path / "credentials"
    f.write_text("[default]\naws_access_key_id = D\naws_secret_access_key = DS\n"
                 "[other]\naws_access_key_id = O\naws_secret_access_key = OS\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(f)}
    assert s3.credentials(env) == s3.Credentials("D", "DS")
    assert s3.credentials({**env, "AWS_PROFILE": "other"}) == s3.Credentials("O", "OS")
    assert s3.credentials({**env, "AWS_ACCESS_KEY_ID": "E", "AWS_SECRET_ACCESS_KEY": "ES"}) \
        == s3.Credentials("E", "ES")
    assert s3.credentials({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}) is None
    assert "DS" not in repr(s3.credentials(env))


@pytest.mark.parametrize("bad", [{"bucket": ""}, {"library": "boto"}, {"part_size_mb": 1},
                                 {"endpoints": ["ftp://x"]}, {"endpoints": [3]}])
def test_bad_settings_are_one_config_error(bad: dict) -> None:
    with pytest.raises(ConfigError) as err:
        TIERS.params("s3", {"bucket": "b", **bad}, "tiers.object")
    assert "\n" not in str(err.value)


# -- against the server ---------------------------------------------------------------------

@pytest.mark.parametrize("library", LIBS)
def test_objects_round_trip_and_the_server_sees_exactly_them(server, library: str) -> None:
    """Small objects (one PUT) and one above the part size (multipart) come back byte for
    byte; the server lists one object per slot written, of the object's size; close
    leaves the bucket as it found it."""
    server.boto().put_object(Bucket=server.bucket, Key="elsewhere/keep-me", Body=b"x")
    before = server.objects(server.bucket)
    tier = build(server, library, 8 * OBJ, rank=1)
    try:
        slots = [0, 5, 2]
        for s in slots:
            assert tier.write(s, payload(s, OBJ)) == OBJ
        tier.write(5, payload(55, OBJ))                       # a slot reused: replaced
        for s, key in ((2, 2), (5, 55), (0, 0)):
            out = aligned_buffer(OBJ)
            assert tier.read(s, out) == OBJ
            assert bytes(out) == bytes(payload(key, OBJ))
        listed = server.objects(server.bucket, tier.rank_prefix)
        assert listed == {f"{tier.rank_prefix}{s}": OBJ for s in slots}
        assert tier.rank_prefix.endswith("/r1/rank1/")
        info = tier.info()
        assert info["endpoint"] == server.url and info["library"] == library
        assert server.secret not in repr(info) and server.key not in repr(info)
    finally:
        tier.close()
    assert server.objects(server.bucket) == before


@pytest.mark.parametrize("library", LIBS)
def test_an_object_above_the_part_size_goes_up_in_parts(server, library: str) -> None:
    big = 6 * (1 << 20) + 4096
    tier = build(server, library, 2 * big, obj=big, part_size_mb=5)
    try:
        assert tier.info()["multipart"] is True
        tier.write(1, payload(9, big))
        head = server.boto().head_object(Bucket=server.bucket, Key=tier.key(1))
        assert head["ContentLength"] == big
        assert head["ETag"].strip('"').endswith("-2")      # S3's mark of a 2-part upload
        out = aligned_buffer(big)
        assert tier.read(1, out) == big and bytes(out) == bytes(payload(9, big))
    finally:
        tier.close()
    assert server.objects(server.bucket) == {}


def test_ranks_spread_over_endpoints_round_robin(server) -> None:
    eps = [server.url, server.url.replace("127.0.0.1", "localhost")]
    picked = []
    for rank in range(4):
        tier = build(server, "minio", OBJ, rank=rank, endpoints=eps)
        picked.append(tier.info()["endpoint"])
        tier.close()
    assert picked == [eps[0], eps[1], eps[0], eps[1]]


def test_a_prefix_holding_foreign_objects_is_refused_unless_allowed(server) -> None:
    server.boto().put_object(Bucket=server.bucket, Key="kv/someone/else", Body=b"theirs")
    with pytest.raises(ConfigError, match=r"tiers.object.prefix: .* holds 1 objects .*allow_foreign"):
        build(server, "minio", 4 * OBJ, prefix="kv")
    tier = build(server, "minio", 4 * OBJ, prefix="kv", allow_foreign=True)
    tier.write(0, payload(1, OBJ))
    tier.close()
    assert server.objects(server.bucket) == {"kv/someone/else": 6}


def test_unreachable_endpoint_and_wrong_keys_are_one_line_each(server, monkeypatch) -> None:
    from s3server import free_port
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match=r"tiers.object: endpoint .* does not answer") as err:
        build(server, "minio", OBJ, endpoints=[dead])
    assert "\n" not in str(err.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(ConfigError, match="refused the credentials") as err:
        build(server, "minio", OBJ)
    assert "wrong" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
        cls = TIERS.load("s3")
        p = TIERS.params("s3", {"bucket": "nobucket", "endpoints": [server.url],
                                "library": "minio"}, "tiers.object")
        cls(p, OBJ, OBJ, level="object").open(RankContext(run_id="x"))


def s3_config(tmp_path: Path, server, dram: int, obj_slots: int, storage: int, **extra) -> object:
    base = {"run": {"results_dir": str(tmp_path)}, "model": {"name": "tiny-1b"},
            "kv": {"chunk_tokens": 16}, "io": {"io_depth": 2, "verify": True},
            "tiers": {"hbm": {"capacity_gb": 0}, "dram": {"capacity_gb": gb(dram)},
                      "object": {"kind": "s3", "capacity_gb": gb(obj_slots),
                                 "bucket": server.bucket, "endpoints": [server.url],
                                 "library": "minio"},
                      "storage": {"capacity_gb": gb(storage), "path": str(tmp_path / "kv")}}}
    for level, n in (("dram", dram), ("storage", storage)):
        if not n:
            base["tiers"][level]["capacity_gb"] = 0
    return load(None, [base, extra])


def test_between_dram_and_a_file_tier_every_object_reads_back_verified(server, tmp_path, rig):
    """DRAM (2 objects) over S3 (3) over a file (16): a prompt of 8 chunks, served twice,
    fills S3 and demotes into the file; every read is verified against its stamp."""
    r = rig(s3_config(tmp_path, server, dram=2, obj_slots=3, storage=16))
    assert [t.level for t in r.tiers] == ["dram", "object", "storage"]
    prompt = [(7, 8 * 16)]
    r.serve(request(1, prompt), request(2, prompt))
    assert r.c["object.write_ops"] > 0 and r.c["storage.write_ops"] > 0
    assert r.c["object.read_ops"] > 0 and r.c["storage.read_ops"] > 0
    assert r.c["verify_checked"] == 8 and r.c.get("verify_mismatches", 0) == 0
    assert len(server.objects(server.bucket)) <= 3            # never more than its slots


def test_verify_catches_an_object_overwritten_behind_the_tiers_back(server, tmp_path, rig):
    from mpi_kvbench.layout import chunk_keys
    r = rig(s3_config(tmp_path, server, dram=0, obj_slots=16, storage=0))
    prompt = [(42, 64)]
    r.serve(request(1, prompt), request(2, prompt))
    assert r.c["object.read_ops"] == 4 and r.c["verify_checked"] == 4
    assert r.c.get("verify_mismatches", 0) == 0
    tier = r.tiers[0]
    keys = chunk_keys(prompt, 16)
    for k in (keys[1], keys[3]):
        slot = r.engine.cache.index[k].slot
        data = bytearray(server.boto().get_object(Bucket=server.bucket,
                                                  Key=tier.key(slot))["Body"].read())
        data[5000] ^= 0xFF
        server.boto().put_object(Bucket=server.bucket, Key=tier.key(slot), Body=bytes(data))
    r.serve(request(3, prompt))
    assert r.c["verify_checked"] == 8 and r.c["verify_mismatches"] == 2
    assert TINY_OBJ == r.obj


def test_an_evicted_object_is_deleted_from_the_bucket(server, tmp_path, rig):
    """S3 at the bottom with 3 slots: four prompts of two chunks evict; every drop is a
    timed DELETE, and the bucket then holds exactly the objects the tier still holds."""
    r = rig(s3_config(tmp_path, server, dram=0, obj_slots=3, storage=0))
    r.serve(*(request(i, [(100 + i, 2 * 16)]) for i in range(4)))
    drops = r.c["object.drops"]
    assert drops > 0 and r.c["object.delete_ops"] == drops
    timed = [h.count for n, h in r.engine.metrics.hist.items() if n.startswith("object.delete.")]
    assert sum(timed) == drops
    tier = r.tiers[0]
    held = {tier.key(e.slot) for e in r.engine.cache.index.values() if e.level == 0}
    assert set(server.objects(server.bucket)) == held
