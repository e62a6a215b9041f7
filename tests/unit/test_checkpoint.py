"""The streaming checkpoint: settings, the buffer pool, and write + restore on a real file
(O_DIRECT where the file system allows it, buffered with each fadvise mode) and on a real
S3 server, each with its peak resident memory held to the pool, not the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
from test_tiers import o_direct_works

from mpi_kvbench.checkpoint import settings as cs
from mpi_kvbench.checkpoint.run import execute
from mpi_kvbench.checkpoint.stream import BufferPool, Producer, chunk_key
from mpi_kvbench.engine import payload as pl
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.mpi.comm import SerialComm
from mpi_kvbench.results.summary import VERIFY_FAILED

MiB = 1 << 20
SIZE = 8 * MiB             # a checkpoint held whole would add this much resident memory


def test_size_from_the_model_is_split_over_the_ranks_in_whole_blocks() -> None:
    s = cs.build({"parameters_b": 8, "size_gb": 0})          # 8B params x 2 B x 7
    assert s.rank_bytes(1) == 112_000_000_000
    assert s.rank_bytes(3) == -(-(112_000_000_000 // 3 + 1) // 4096) * 4096
    assert cs.build({"size_gb": 1e-6}).rank_bytes(1) == 4096
    assert cs.build({}).pool_bytes == 4 * 32 * MiB            # the default pool


@pytest.mark.parametrize("bad, field", [({"target": "tape"}, "target"),
                                        ({"fadvise": "never"}, "fadvise"),
                                        ({"num_buffers": 1}, "num_buffers"),
                                        ({"chunk_mb": 0.001}, "chunk_mb"),
                                        ({"direct": True, "fadvise": "dontneed"}, "fadvise"),
                                        ({"target": "s3"}, "s3.bucket"),
                                        ({"sizegb": 1}, "sizegb")])
def test_bad_settings_are_one_line_naming_the_field(bad: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f"checkpoint.{field}") as err:
        cs.build(bad)
    assert "\n" not in str(err.value)


def test_the_pool_streams_every_chunk_once_in_order_stamped() -> None:
    pool = BufferPool(3, 64 * 1024)
    total = 5 * 64 * 1024 + 8192                 # a short last chunk
    prod = Producer(pool, total, rank=3)
    seen = []
    try:
        for i, chunk in enumerate(prod.chunks()):
            assert pl.check(chunk, chunk_key(3, i), prod.crcs[i])
            seen.append(bytes(chunk[:64]))
            assert any(chunk.obj is b for b in pool.buffers)     # a pool buffer, no copy
    finally:
        prod.close()
        pool.close()
    assert [len(x) for x in seen] == [64] * 6 and len(set(seen)) == 6
    assert prod.sizes == [65536] * 5 + [8192]


def run_checkpoint(tmp_path: Path, **over) -> dict:
    s = cs.build({"size_gb": SIZE / 1e9, "chunk_mb": 0.25, "num_buffers": 4, "verify": True,
                  "results_dir": str(tmp_path / "res"), "run_name": "ck",
                  "path": str(tmp_path / "data"), "calibrate_gb": MiB / 1e9, **over})
    assert execute(s, "test", SerialComm()) == 0
    out = tmp_path / "res" / "ck"
    summary = json.loads((out / "summary.json").read_text())
    with h5py.File(out / "result.h5") as f:
        assert f["ranks/bytes"][()].tolist() == [summary["bytes_per_rank"]]
    return summary


def check_streamed(summary: dict, size: int = SIZE, margin: int = 4 * MiB) -> None:
    """Written and restored whole and verified, and resident memory never grew by more
    than the pool and a margin: together well below the checkpoint's size."""
    assert summary["complete"] and summary["bytes_total"] == size
    assert summary["verify_mismatches"] == 0
    assert summary["time_to_checkpoint_s"] > 0 and summary["time_to_restore_s"] > 0
    assert summary["pool_bytes"] + margin < size
    assert summary["peak_rss_growth_bytes_max"] < summary["pool_bytes"] + margin


def test_file_checkpoint_o_direct_streams_and_restores(tmp_path: Path) -> None:
    summary = run_checkpoint(tmp_path)
    check_streamed(summary)
    assert summary["target_info"]["direct"] == o_direct_works(tmp_path)
    assert summary["calibration"]["block_bytes"] == MiB // 4
    # each rank's own rate over the raw rate (one rank here: the ratio of the two reported)
    assert summary["write_vs_calibrated"] == pytest.approx(
        summary["write_gbps_per_rank"]["min"] / summary["calibration"]["write_gbps"], rel=0.01)
    assert not (tmp_path / "data").exists()         # removed, with the directory it made


@pytest.mark.parametrize("fadvise", ["none", "sequential", "dontneed"])
def test_buffered_file_checkpoint_with_each_fadvise_mode(tmp_path: Path, fadvise: str) -> None:
    summary = run_checkpoint(tmp_path, direct=False, fadvise=fadvise, calibrate=False)
    check_streamed(summary)
    assert summary["target_info"] == {**summary["target_info"], "direct": False,
                                      "fadvise": fadvise}


def test_a_corrupted_restore_is_counted(tmp_path: Path, monkeypatch) -> None:
    from mpi_kvbench.checkpoint import targets
    real = targets.FileTarget.read_into

    def flip(self, out):
        n = real(self, out)
        if self.offset == 2 * MiB // 4:               # the second chunk
            out[100] = out[100] ^ 0xFF
        return n
    monkeypatch.setattr(targets.FileTarget, "read_into", flip)
    s = cs.build({"size_gb": MiB / 1e9, "chunk_mb": 0.25, "verify": True, "calibrate": False,
                  "results_dir": str(tmp_path / "res"), "run_name": "bad",
                  "path": str(tmp_path / "d")})
    assert execute(s, "test", SerialComm()) == VERIFY_FAILED   # exit 3, as a run's verify
    summary = json.loads((tmp_path / "res" / "bad" / "summary.json").read_text())
    assert summary["verify_mismatches"] == 1


def test_s3_checkpoint_goes_up_in_parts_and_comes_back(s3_server, tmp_path, monkeypatch) -> None:
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    bucket = "ckpt"
    s3_server.boto().create_bucket(Bucket=bucket)
    # 64 MiB in 5 MiB parts through 2 buffers; the margin is the client's own part
    # buffers and copies (minio: about 30 MB whatever the size)
    summary = run_checkpoint(tmp_path, target="s3", chunk_mb=5, num_buffers=2, calibrate=False,
                             size_gb=64 * MiB / 1e9,
                             s3={"bucket": bucket, "endpoints": [s3_server.url], "prefix": "ck"})
    check_streamed(summary, 64 * MiB, 40 * MiB)
    assert summary["target_info"]["endpoint"] == s3_server.url
    assert s3_server.objects(bucket) == {}           # removed after the restore


def test_a_primed_pool_hands_its_first_chunks_without_a_stall() -> None:
    pool = BufferPool(3, 64 * 1024)
    prod = Producer(pool, 8 * 64 * 1024, rank=0)
    chunks = prod.chunks()
    try:
        prod.wait_primed()
        for _ in range(3):       # the pool's three buffers are full: no wait for any
            next(chunks)
        assert prod.stalls == 0
    finally:
        chunks.close()           # releases the chunk it holds
        prod.close()
        pool.close()
