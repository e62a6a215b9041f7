"""KV born on the device and moved without a host bounce: the HBM tier's ``produce`` and
its direct copies to and from DRAM slots, through the tiers and through the I/O pool.

Runs without a GPU on real torch CPU tensors (``device: cpu``); the CUDA-only tests at the
end (streams, pinned memory) are skipped here and run where torch sees a GPU."""

from __future__ import annotations

import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from engine_rig import make_config, request

from mpi_kvbench.context import RankContext
from mpi_kvbench.engine import payload as pl
from mpi_kvbench.engine.iopool import MOVE, READ, WRITE, IOPool, Op
from mpi_kvbench.layout import MASK64, aligned_buffer
from mpi_kvbench.registry import TIERS

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch sees no GPU")

OBJ = 4 * 4096
BIG_KEY = (1 << 64) - 12345          # the top bit set: stamped as the same 64 bits


def open_tier(name: str, slots: int, obj: int = OBJ, **params):
    cls = TIERS.load(name)
    tier = cls(cls.Params(**params), slots * obj, obj, level=name)
    tier.open(RankContext())
    return tier


@pytest.fixture
def tiers():
    """Opens tiers by (name, slots, params); closes them all afterwards."""
    made = []

    def make(name: str, slots: int = 8, **params):
        made.append(open_tier(name, slots, **params))
        return made[-1]

    yield make
    for t in made:
        t.close()


class NoPayload:
    """A payload source that must not be used: the produce path takes no host bytes."""

    lends = False   # I/O threads make their own read buffers

    def take(self):
        raise AssertionError("the host payload ring was used")

    def give_back(self, buf) -> None:
        raise AssertionError("the host payload ring was used")


def read_back(tier, slot: int) -> bytes:
    out = aligned_buffer(tier.object_bytes)
    assert tier.read(slot, out) == tier.object_bytes
    return bytes(out)


def blocks(data: bytes) -> list[bytes]:
    return [data[i:i + 4096] for i in range(0, len(data), 4096)]


# ---- produce ------------------------------------------------------------------------------


def test_produced_objects_carry_the_host_payload_stamps_and_verify(tiers) -> None:
    hbm = tiers("hbm", device="cpu")
    assert hbm.makes_payload and hbm.info()["produces_on_device"] is True
    for slot, key, seq in [(0, 7, 1), (3, BIG_KEY, 2), (5, 1 << 63, (1 << 40) + 3)]:
        assert hbm.produce(slot, key, seq) == OBJ
        data = read_back(hbm, slot)
        # exactly what payload.stamp writes over the same bytes
        restamped = aligned_buffer(OBJ)
        restamped[:] = data
        pl.stamp(restamped, key, seq)
        assert bytes(restamped) == data
        words = np.frombuffer(data, dtype=np.uint64).reshape(-1, 512)
        assert (words[:, 0] == key & MASK64).all() and (words[:, 1] == seq).all()
        assert (words[:, 2] == np.arange(OBJ // 4096) * 4096).all()
        crc = pl.checksum(data)
        assert crc == zlib.crc32(data)
        assert pl.check(memoryview(data), key, crc)
        assert not pl.check(memoryview(data), key + 1, crc)           # someone else's object
        bad = bytearray(data)
        bad[4096 + 100] ^= 1                                          # one bit, in the body
        assert not pl.check(memoryview(bytes(bad)), key, crc)


def test_no_4k_block_repeats_across_produced_objects_and_the_bytes_do_not_compress(tiers) -> None:
    hbm = tiers("hbm", 12, device="cpu")
    objects = []
    for i in range(12):
        hbm.produce(i, key=42, seq=i)                    # same key: only seq and the fill differ
        objects.append(read_back(hbm, i))
    whole = [b for o in objects for b in blocks(o)]
    assert len(set(whole)) == len(whole)
    bodies = [b[24:] for b in whole]                     # the fill itself, without the stamps
    assert len(set(bodies)) == len(bodies)
    joined = b"".join(objects)
    assert len(zlib.compress(joined, 6)) > 0.99 * len(joined)


def test_the_same_object_produced_twice_differs_beyond_its_stamp(tiers) -> None:
    hbm = tiers("hbm", 2, device="cpu")
    hbm.produce(0, 9, 1)
    hbm.produce(1, 9, 1)
    a, b = read_back(hbm, 0), read_back(hbm, 1)
    assert a != b and a[24:4096] != b[24:4096]


# ---- direct moves between HBM and DRAM ----------------------------------------------------


def forbid_plain_calls(tier) -> None:
    """The direct path never calls the DRAM tier's own read/write (that would be a bounce)."""
    def refuse(*_):
        raise AssertionError(f"{tier.name}.read/write called: the move bounced")

    tier.read = tier.write = refuse


def test_direct_moves_round_trip_every_byte_through_the_tiers(tiers) -> None:
    hbm, dram = tiers("hbm", device="cpu"), tiers("dram")
    assert dram.info()["pinned"] is False                  # no GPU: today's mmap buffer
    hbm.produce(2, 11, 1)
    original = read_back(hbm, 2)
    assert hbm.copy_to(2, dram, 6) == OBJ                  # device -> host slot
    assert bytes(dram.host_slot(6)) == original
    assert hbm.copy_from(4, dram, 6) == OBJ                # host slot -> device
    assert read_back(hbm, 4) == original
    # a tier without host slots gets no direct path: the pool bounces as before
    null = tiers("null")
    assert hbm.copy_to(2, null, 0) is None and hbm.copy_from(2, null, 0) is None


def test_the_pool_produces_moves_directly_and_counts_bytes_on_both_tiers(tiers) -> None:
    hbm, dram = tiers("hbm", device="cpu"), tiers("dram")
    pool = IOPool([hbm, dram], OBJ, 4, NoPayload(), verify=True)
    try:
        writes = [Op(WRITE, 100 + i, dst=0, dst_slot=i, seq=i) for i in range(4)]
        done = pool.run(writes)
        for op, d in zip(writes, done, strict=True):
            data = read_back(hbm, op.dst_slot)
            assert d.write_bytes == OBJ and d.read_bytes == 0 and d.read_ns == 0 and d.write_ns > 0
            assert d.crc == pl.checksum(data) and pl.check(memoryview(data), op.key, d.crc)
        crcs = [d.crc for d in done]
        forbid_plain_calls(dram)
        down = [Op(MOVE, 100 + i, src=0, src_slot=i, dst=1, dst_slot=7 - i, crc=crcs[i])
                for i in range(4)]
        up = [Op(MOVE, 100 + i, src=1, src_slot=7 - i, dst=0, dst_slot=4 + i, crc=crcs[i])
              for i in range(4)]
        for batch in (down, up):
            for d in pool.run(batch):
                assert d.ok
                assert d.read_bytes == d.write_bytes == OBJ
                assert d.read_ns == d.write_ns == d.end - d.start > 0   # one copy: both sides
        for i in range(4):
            assert read_back(hbm, 4 + i) == read_back(hbm, i)
            assert bytes(dram.host_slot(7 - i)) == read_back(hbm, i)
    finally:
        pool.close()


def test_verify_catches_a_corrupted_object_on_every_path(tiers) -> None:
    hbm, dram = tiers("hbm", device="cpu"), tiers("dram")
    pool = IOPool([hbm, dram], OBJ, 2, NoPayload(), verify=True)
    try:
        (d,) = pool.run([Op(WRITE, 5, dst=0, dst_slot=0, seq=1)])
        crc = d.crc
        hbm._buf[0][5000] ^= 1                           # a flipped bit on the "device"
        (bad_read,) = pool.run([Op(READ, 5, src=0, src_slot=0, crc=crc)])
        (bad_down,) = pool.run([Op(MOVE, 5, src=0, src_slot=0, dst=1, dst_slot=0, crc=crc)])
        assert not bad_read.ok and not bad_down.ok
        hbm._buf[0][5000] ^= 1
        (good_down,) = pool.run([Op(MOVE, 5, src=0, src_slot=0, dst=1, dst_slot=0, crc=crc)])
        assert good_down.ok
        np.frombuffer(dram.host_slot(0), dtype=np.uint8)[9000] ^= 1
        (bad_up,) = pool.run([Op(MOVE, 5, src=1, src_slot=0, dst=0, dst_slot=1, crc=crc)])
        assert not bad_up.ok
    finally:
        pool.close()


def test_emulated_hbm_keeps_todays_two_call_path(tiers) -> None:
    """Without torch's device path nothing changes: host payload, read then write."""
    hbm, dram = tiers("hbm", device="emulated"), tiers("dram")
    assert hbm.makes_payload is False and hbm.info()["produces_on_device"] is False
    assert hbm.copy_to(0, dram, 0) is None and hbm.copy_from(0, dram, 0) is None
    payload = pl.PayloadSource(OBJ, 2, "reuse")
    pool = IOPool([hbm, dram], OBJ, 2, payload, verify=True)
    calls = []
    real_write = dram.write
    dram.write = lambda slot, data: calls.append(slot) or real_write(slot, data)
    try:
        (w,) = pool.run([Op(WRITE, 3, dst=0, dst_slot=1, seq=1)])
        (m,) = pool.run([Op(MOVE, 3, src=0, src_slot=1, dst=1, dst_slot=2, crc=w.crc)])
        assert m.ok and calls == [2] and m.read_bytes == m.write_bytes == OBJ
        assert bytes(dram.host_slot(2)) == read_back(hbm, 1)
    finally:
        pool.close()
        payload.close()


# ---- the engine on the new paths ----------------------------------------------------------


def test_the_engine_on_a_torch_hbm_verifies_every_read_and_counts_every_byte(tmp_path: Path, rig) -> None:
    extra = {"tiers": {"hbm": {"device": "cpu"}}, "io": {"verify": True},
             "engine": {"promotion": "hbm"}}
    r = rig(make_config(tmp_path, hbm=6, dram=6, storage=64, **extra))
    assert r.tiers[0].makes_payload
    r.engine.payload.take = NoPayload().take          # every HBM write is made on the device
    for i in range(6):                                 # new prompts push older ones down
        r.serve(request(i, [(1000 + i, 64)]))
    for i in reversed(range(6)):                       # read back: hits in every tier
        r.serve(request(10 + i, [(1000 + i, 64)]))
    c = r.c
    assert c.get("verify_mismatches", 0) == 0 and c["verify_checked"] > 0
    assert c["demotions"] > 0 and c["promotions"] > 0 and c["hbm.write_ops"] > 0
    assert c["hbm.chunk_hits"] and c["dram.chunk_hits"] and c["storage.chunk_hits"]
    for level in ("hbm", "dram", "storage"):
        for kind in ("read", "write"):
            assert c.get(f"{level}.{kind}_bytes", 0) == c.get(f"{level}.{kind}_ops", 0) * r.obj


# ---- set-up facts -------------------------------------------------------------------------


def test_gds_without_a_cuda_device_is_off_and_says_why(tiers) -> None:
    info = tiers("hbm", device="cpu", gds=True).info()
    assert info["gds"] is False and "CUDA" in info["gds_status"]
    assert tiers("hbm", device="cpu").info()["gds_status"] == "off"


class FileKvikio:
    """kvikio's ``CuFile`` as plain file reads: opens the path it is given, as cuFile does."""

    class CuFile:
        def __init__(self, path: str, mode: str) -> None:
            self.fh = open(path, mode + "b")   # noqa: SIM115 - closed by close()

        def read(self, dst, nbytes: int, offset: int) -> int:
            self.fh.seek(offset)
            data = self.fh.read(nbytes)
            dst.numpy()[: len(data)] = np.frombuffer(data, dtype=np.uint8)
            return len(data)

        def close(self) -> None:
            self.fh.close()


def test_gds_reads_a_slab_whose_name_set_up_removed(tiers, tmp_path: Path) -> None:
    """A run unlinks every slab's name at the end of set-up (``Tier.unlink``); a GDS read
    after that must still reach the slab (through its open descriptor), byte for byte."""
    from mpi_kvbench.tiers.hbm import _Gds

    hbm = tiers("hbm", 4, device="cpu")
    storage = TIERS.load("storage")(TIERS.load("storage").Params(path=str(tmp_path), o_direct=False),
                                    4 * OBJ, OBJ, level="storage")
    storage.open(RankContext(run_id="gds"))
    try:
        data = np.random.default_rng(5).integers(0, 256, OBJ, dtype=np.uint8)
        src = aligned_buffer(OBJ)
        src[:] = data.tobytes()
        storage.write(2, memoryview(src))
        storage.unlink()                                  # as run.py does before measuring
        assert not Path(storage.path).exists()
        hbm._gds = _Gds(FileKvikio)
        assert hbm.copy_from(1, storage, 2) == OBJ
        assert read_back(hbm, 1) == data.tobytes()
    finally:
        storage.close()


def test_dram_can_be_told_not_to_pin(tiers) -> None:
    assert tiers("dram", pin=False).info()["pinned"] is False
    dram = tiers("dram", 3)
    dram.write(1, memoryview(b"\x07" * OBJ))
    assert bytes(dram.host_slot(1)) == b"\x07" * OBJ   # the slot itself, not a copy


# ---- CUDA only (skipped without a GPU) ----------------------------------------------------


@needs_cuda
def test_cuda_dram_slots_and_staging_buffers_are_pinned(tiers) -> None:
    hbm, dram = tiers("hbm", device="auto"), tiers("dram")
    assert hbm.device.startswith("cuda") and hbm.info()["produces_on_device"] is True
    assert dram.info()["pinned"] is True
    assert torch.frombuffer(dram.host_slot(0), dtype=torch.uint8).is_pinned()
    assert torch.frombuffer(hbm.staging_buffer(), dtype=torch.uint8).is_pinned()


@needs_cuda
def test_cuda_copies_run_on_the_threads_own_streams(tiers) -> None:
    hbm = tiers("hbm", device="auto")
    seen = {}

    def probe(name: str) -> None:
        with hbm._on_stream():
            seen[name] = torch.cuda.current_stream(hbm.device)

    threads = [threading.Thread(target=probe, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    default = torch.cuda.default_stream(hbm.device)
    assert len({s.cuda_stream for s in seen.values()}) == 3
    assert default.cuda_stream not in {s.cuda_stream for s in seen.values()}


@needs_cuda
def test_cuda_pool_paths_are_exact_under_concurrency(tmp_path: Path) -> None:
    obj = 1 << 20
    hbm = open_tier("hbm", 32, obj, device="auto")
    dram = open_tier("dram", 32, obj)
    storage = open_tier("storage", 32, obj, path=str(tmp_path), o_direct=False)
    pool = IOPool([hbm, dram, storage], obj, 8, NoPayload(), verify=True)
    try:
        done = pool.run([Op(WRITE, 500 + i, dst=0, dst_slot=i, seq=i) for i in range(32)])
        crc = [d.crc for d in done]
        steps = [
            [Op(MOVE, 500 + i, src=0, src_slot=i, dst=1, dst_slot=i, crc=crc[i]) for i in range(32)],
            [Op(MOVE, 500 + i, src=1, src_slot=i, dst=2, dst_slot=i, crc=crc[i]) for i in range(32)],
            [Op(MOVE, 500 + i, src=2, src_slot=i, dst=0, dst_slot=31 - i, crc=crc[i]) for i in range(32)],
            [Op(READ, 500 + i, src=0, src_slot=31 - i, crc=crc[i]) for i in range(32)],
        ]
        for ops in steps:
            for d in pool.run(ops):
                assert d.ok and d.read_bytes == obj
    finally:
        pool.close()
        for t in (hbm, dram, storage):
            t.close()
