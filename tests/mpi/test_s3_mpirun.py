"""The object tier under a real ``mpirun -n 2`` against a local S3 server (moto): the
counters agree with what the server holds, and a server that does not answer is one
line and exit status 2 before anything is measured."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import h5py
from test_mpirun import MINI, gb, mpirun, names

OBJ = 512 * 1024           # MINI with 512-token chunks
CHATBOT = ["--set", "workload.templates={chatbot: 1, coding: 0, document: 0}"]


def s3_args(server, bucket: str, *extra: str) -> list[str]:
    return [*MINI, "--chunk-tokens", "512", "--gpu-mem-gb", "0", "--cpu-mem-gb", gb(2, OBJ),
            "--storage-capacity-gb", "0", "--io-depth", "4", "--users", "4", *CHATBOT,
            "--duration", "0", "--max-requests", "4",
            "--set", "tiers.object.kind=s3", "--set", f"tiers.object.capacity_gb={gb(64, OBJ)}",
            "--set", f"tiers.object.bucket={bucket}",
            "--set", f"tiers.object.endpoints=[{server.url}]", *extra]


def test_two_ranks_on_s3_match_the_servers_view(s3_server, tmp_path: Path) -> None:
    """With room for every object (no slot reused) each rank's PUTs are exactly the
    objects under its prefix: as many, and as many bytes, as its counters say."""
    bucket = f"m{uuid.uuid4().hex[:8]}"
    s3_server.boto().create_bucket(Bucket=bucket)
    # the default library; s3dlio and s3torchconnector import torch when it is installed
    # (seconds per rank), so they are tested in one process (tests/unit/test_s3_tier.py)
    proc, _ = mpirun(2, *s3_args(s3_server, bucket, "--set", "tiers.object.keep_objects=true",
                                 "--set", "io.verify=true"),
                     "--results-dir", str(tmp_path / "r"), "--run-name", "s3", cwd=tmp_path,
                     env=s3_server.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(tmp_path / "r" / "s3" / "result.h5") as f:
        cn = names(f["counters"])
        c = f["counters/per_rank"][()]
        env = [json.loads(e) for e in f["ranks/environment"][()]]
    summary = json.loads((tmp_path / "r" / "s3" / "summary.json").read_text())
    assert summary["complete"]
    for rank in (0, 1):
        info = env[rank]["tiers"][-1]
        assert info["kind"] == "s3" and info["endpoint"] == s3_server.url
        assert s3_server.secret not in json.dumps(env[rank])
        held = s3_server.objects(bucket, info["prefix"])
        writes = int(c[rank, cn.index("object.write_ops")])
        assert writes > 0 and c[rank, cn.index("object.read_ops")] > 0
        assert len(held) == writes
        assert sum(held.values()) == int(c[rank, cn.index("object.write_bytes")]) == writes * OBJ
    assert c[:, cn.index("verify_checked")].sum() > 0
    assert "verify_mismatches" not in cn or c[:, cn.index("verify_mismatches")].sum() == 0
    every = s3_server.objects(bucket)
    s3_server.boto().delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in every]})


def test_an_endpoint_that_does_not_answer_is_one_line_before_measuring(s3_server,
                                                                       tmp_path: Path) -> None:
    from s3server import free_port
    dead = s3_server.__class__(f"http://127.0.0.1:{free_port()}", s3_server.proc)
    proc, _ = mpirun(2, *s3_args(dead, "nobucket", "--set", "tiers.object.library=minio"),
                     "--results-dir", str(tmp_path / "r"), cwd=tmp_path, env=s3_server.env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "does not answer" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()

