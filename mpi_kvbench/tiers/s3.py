"""Object-storage tier (``kind: s3``): each KV object is an S3 object; the clients behind it.

Like the file tier, the tier is an array of slots: slot ``s`` of rank ``r`` is the object
``bucket/prefix/<run_id>/rank<r>/<s>``; a write is a PUT (multipart above
``part_size_mb``), a read a GET into the I/O thread's buffer. An object the hierarchy
drops or demotes is replaced when its slot is reused (a PUT over a key is S3's atomic
replace), so the bucket never holds more than ``slots`` objects per rank; ``close``
DELETEs every object under the rank's prefix. The I/O pool times every call, stamps the
payload and verifies reads exactly as for the file tier. The tier sits at level
``object`` (between DRAM and a file tier) or ``storage`` (the bottom).

Safety: ``open`` lists ``prefix`` first; objects there that this run did not make stop
the run (one ConfigError) unless ``allow_foreign`` is set, and the tier only ever deletes
under its own run prefix. That listing is also the reachability and credentials check,
so a wrong endpoint or key is one line before anything is measured.

Three libraries move the bytes (the ones the seed benchmark uses): ``s3dlio`` (Rust),
``s3torchconnector`` (the AWS CRT client) and ``minio`` (pure Python over urllib3). Each is
wrapped in a class with the same operations (put, streamed put, get, streamed get, list,
delete), so the tier and the checkpoint writer never branch on the library; a library
that is not installed is one ConfigError naming it. The default is the library that moved
the most bytes per CPU-second of the client in ``benchmarks/s3_libraries.py``.

Where an endpoint comes from, first found wins: the ``endpoints`` setting; the seed's
variables ``S3_ENDPOINT_URIS`` (comma separated), ``S3_ENDPOINT_TEMPLATE``
(``http://10.0.0.{1...4}:9000`` expands to four), ``S3_ENDPOINT_FILE`` (one a line); then
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; else AWS itself for the region. Credentials
come only from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``) or the standard AWS files (``AWS_SHARED_CREDENTIALS_FILE``, default
``~/.aws/credentials``, profile ``AWS_PROFILE``); they are handed to the client and kept
nowhere else, so no result can hold them.
"""

from __future__ import annotations

import configparser
import dataclasses
import importlib.util
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mpi_kvbench.context import RankContext
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.params import choice
from mpi_kvbench.tiers.base import Tier

DEFAULT_LIBRARY = "minio"      # the most GB per CPU-second here: benchmarks/s3_libraries.py
MiB = 1 << 20
ENDPOINT_VARS = ("S3_ENDPOINT_URIS", "S3_ENDPOINT_TEMPLATE", "S3_ENDPOINT_FILE",
                 "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def read_fully(reader: Any, out: memoryview) -> int:
    """Reads a response body into ``out`` until it is full or the body ends; bytes read."""
    done = 0
    while done < len(out):
        got = reader.readinto(out[done:])
        if not got:
            break
        done += got
    return done


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:   # never print a secret, not even in a traceback
        return "Credentials(<hidden>)"


def credentials(env: Mapping[str, str] | None = None) -> Credentials | None:
    """The environment's keys, else the AWS credentials file's profile; None: anonymous."""
    env = os.environ if env is None else env
    key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or None)
    path = os.path.expanduser(env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        return None
    profile = env.get("AWS_PROFILE", "default")
    if parser.has_option(profile, "aws_access_key_id") and parser.has_option(
            profile, "aws_secret_access_key"):
        sec = parser[profile]
        return Credentials(sec["aws_access_key_id"], sec["aws_secret_access_key"],
                           sec.get("aws_session_token") or None)
    return None


def region(configured: str, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return configured or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def expand_template(template: str) -> list[str]:
    """``http://h{1...3}:9000`` -> three URLs (the seed's ``{N...M}`` form)."""
    m = re.search(r"\{(\d+)\.\.\.(\d+)\}", template)
    if not m:
        return [template]
    lo, hi = int(m.group(1)), int(m.group(2))
    return [template[:m.start()] + str(i) + template[m.end():] for i in range(lo, hi + 1)]


def endpoints(configured: Iterable[str], region_name: str,
              env: Mapping[str, str] | None = None) -> tuple[list[str], str]:
    """Every endpoint the ranks share, and where the list came from."""
    env = os.environ if env is None else env
    found = [e for e in configured if e]
    if found:
        return found, "endpoints"
    if env.get("S3_ENDPOINT_URIS"):
        return [e.strip() for e in env["S3_ENDPOINT_URIS"].split(",") if e.strip()], "S3_ENDPOINT_URIS"
    if env.get("S3_ENDPOINT_TEMPLATE"):
        return expand_template(env["S3_ENDPOINT_TEMPLATE"]), "S3_ENDPOINT_TEMPLATE"
    if env.get("S3_ENDPOINT_FILE"):
        try:
            with open(env["S3_ENDPOINT_FILE"]) as fh:
                return [ln.strip() for ln in fh if ln.strip() and not ln.startswith("#")], \
                    "S3_ENDPOINT_FILE"
        except OSError as exc:
            raise ConfigError(f"S3_ENDPOINT_FILE={env['S3_ENDPOINT_FILE']}: {exc.strerror};"
                              " point it at a file of endpoint URLs") from None
    for var in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if env.get(var):
            return [env[var]], var
    return [f"https://s3.{region_name}.amazonaws.com"], "aws"


def check_endpoint(url: str, where: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}={url!r}: not an endpoint URL; give http(s)://host[:port]")


class StoreError(Exception):
    """A request the server refused or never answered; ``kind`` says which."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind      # "unreachable", "credentials", "no_bucket", "other"


class Client:
    """One library's connection to one endpoint: the operations both users need."""

    library: str

    def __init__(self, endpoint: str, region_name: str, creds: Credentials | None,
                 part_bytes: int, connections: int) -> None:
        self.endpoint = endpoint
        self.part_bytes = part_bytes

    def put(self, bucket: str, key: str, data: memoryview) -> None:
        """One object (multipart when larger than ``part_bytes``)."""
        raise NotImplementedError

    def put_stream(self, bucket: str, key: str, chunks: Iterator[memoryview]) -> int:
        """One object from a stream of chunks of unknown total (multipart); bytes sent."""
        raise NotImplementedError

    def get_into(self, bucket: str, key: str, out: memoryview) -> int:
        """The object's bytes into ``out``; returns how many."""
        raise NotImplementedError

    def get_stream(self, bucket: str, key: str) -> Any:
        """The object as a stream: ``readinto(view)`` in order, then ``close()``."""
        raise NotImplementedError

    def list(self, bucket: str, prefix: str) -> list[str]:
        """The key of every object under ``prefix``."""
        raise NotImplementedError

    def delete(self, bucket: str, keys: list[str]) -> None:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - most clients hold nothing to free
        """Frees connections."""


def classify(exc: BaseException) -> StoreError:
    """A library's exception as a StoreError: the three causes an operator can fix apart."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if any(s in low for s in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied",
                              "access denied", "forbidden", "403", "no credentials",
                              "invalidtoken", "expiredtoken", "credential")):
        return StoreError("credentials", text)
    if "nosuchbucket" in low or "no such bucket" in low or "bucket does not exist" in low:
        return StoreError("no_bucket", text)
    if any(s in low for s in ("connection refused", "connect", "timed out", "timeout",
                              "name or service not known", "dns", "unreachable", "dispatch")):
        return StoreError("unreachable", text)
    return StoreError("other", text)


def _fill(out: memoryview, src) -> int:
    """Copies a library's returned bytes into ``out``; returns how many."""
    view = memoryview(src).cast("B")
    n = min(len(view), len(out))
    out[:n] = view[:n]
    return n


class MinioClient(Client):
    """minio-py: pure Python over urllib3; signs every payload with SHA-256 over plain HTTP."""

    library = "minio"

    def __init__(self, endpoint: str, region_name: str, creds: Credentials | None,
                 part_bytes: int, connections: int) -> None:
        super().__init__(endpoint, region_name, creds, part_bytes, connections)
        import urllib3
        from minio import Minio
        parts = urlsplit(endpoint)
        http = urllib3.PoolManager(
            maxsize=connections, timeout=urllib3.Timeout(connect=5, read=120),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]))
        self._mc = Minio(parts.netloc, access_key=creds.access_key if creds else None,
                         secret_key=creds.secret_key if creds else None,
                         session_token=creds.session_token if creds else None,
                         secure=parts.scheme == "https", region=region_name, http_client=http)

    def put(self, bucket: str, key: str, data: memoryview) -> None:
        self._mc.put_object(bucket, key, _ViewReader(iter([data])), len(data),
                            part_size=max(self.part_bytes, 5 << 20))

    def put_stream(self, bucket: str, key: str, chunks: Iterator[memoryview]) -> int:
        reader = _ViewReader(chunks)
        self._mc.put_object(bucket, key, reader, -1, part_size=max(self.part_bytes, 5 << 20))
        return reader.sent

    def get_into(self, bucket: str, key: str, out: memoryview) -> int:
        resp = self._mc.get_object(bucket, key)
        try:
            return read_fully(resp, out)
        finally:
            resp.close()
            resp.release_conn()

    def get_stream(self, bucket: str, key: str) -> Any:
        return _Response(self._mc.get_object(bucket, key))

    def list(self, bucket: str, prefix: str) -> list[str]:
        return [o.object_name for o in self._mc.list_objects(bucket, prefix=prefix, recursive=True)]

    def delete(self, bucket: str, keys: list[str]) -> None:
        from minio.deleteobjects import DeleteObject
        for start in range(0, len(keys), 1000):
            errors = list(self._mc.remove_objects(
                bucket, [DeleteObject(k) for k in keys[start:start + 1000]]))
            if errors:
                raise StoreError("other", f"delete failed: {errors[0]}")


class _Response:
    """A urllib3 response read in order, its connection released at close."""

    def __init__(self, resp: Any) -> None:
        self._resp = resp

    def readinto(self, out: memoryview) -> int:
        return self._resp.readinto(out)

    def close(self) -> None:
        self._resp.close()
        self._resp.release_conn()


class _RangeReader:
    """Sequential reads of one object as ranged GETs (s3dlio has no streamed GET)."""

    def __init__(self, s3: Any, uri: str) -> None:
        self._s3, self._uri, self._off = s3, uri, 0

    def readinto(self, out: memoryview) -> int:
        n = _fill(out, self._s3.get_range(self._uri, self._off, len(out))) if len(out) else 0
        self._off += n
        return n

    def close(self) -> None:
        pass


class _ViewReader:
    """A file-like ``read(n)`` over a stream of memoryviews (what minio uploads from).
    A chunk is handed back to its producer (the iterator advanced) only once it is sent."""

    def __init__(self, chunks: Iterator[memoryview]) -> None:
        self._chunks = chunks
        self._cur = memoryview(b"")
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        if not self._cur:
            self._cur = next(self._chunks, memoryview(b""))
        n = len(self._cur) if size < 0 else min(size, len(self._cur))
        out = bytes(self._cur[:n])
        self._cur = self._cur[n:]
        self.sent += n
        return out


class S3dlioClient(Client):
    """s3dlio: Rust (aws-sdk-s3 on tokio); one endpoint per process, read from
    ``AWS_ENDPOINT_URL``, credentials from the SDK's standard chain (env, AWS files)."""

    library = "s3dlio"

    def __init__(self, endpoint: str, region_name: str, creds: Credentials | None,
                 part_bytes: int, connections: int) -> None:
        super().__init__(endpoint, region_name, creds, part_bytes, connections)
        # s3dlio takes its endpoint from the process environment; a rank is one process
        # and talks to one endpoint, so this is set once, before the first request
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        os.environ.setdefault("AWS_REGION", region_name)
        import s3dlio
        self._s3 = s3dlio

    def put(self, bucket: str, key: str, data: memoryview) -> None:
        if len(data) > self.part_bytes:
            self.put_stream(bucket, key, iter([data[i:i + self.part_bytes]
                                               for i in range(0, len(data), self.part_bytes)]))
        else:
            self._s3.put_bytes(f"s3://{bucket}/{key}", data)

    def put_stream(self, bucket: str, key: str, chunks: Iterator[memoryview]) -> int:
        writer = self._s3.MultipartUploadWriter.from_uri(
            f"s3://{bucket}/{key}", part_size=max(self.part_bytes, 5 << 20), max_in_flight=4)
        sent = 0
        try:
            for chunk in chunks:
                writer.write(chunk, copy=True)   # the chunk's buffer is reused at once
                sent += len(chunk)
            writer.close()
        except BaseException:
            abort = getattr(writer, "abort", None)
            if abort is not None:
                abort()
            raise
        return sent

    def get_into(self, bucket: str, key: str, out: memoryview) -> int:
        return _fill(out, self._s3.get(f"s3://{bucket}/{key}"))

    def get_stream(self, bucket: str, key: str) -> Any:
        return _RangeReader(self._s3, f"s3://{bucket}/{key}")

    def list(self, bucket: str, prefix: str) -> list[str]:
        head = f"s3://{bucket}/"
        return [k[len(head):] if k.startswith(head) else k
                for k in self._s3.list(f"{head}{prefix}", recursive=True)]

    def delete(self, bucket: str, keys: list[str]) -> None:
        for k in keys:
            self._s3.delete(f"s3://{bucket}/{k}")


class S3TorchClient(Client):
    """s3torchconnector: the AWS Common Runtime client (C), credentials from its default
    chain (env, AWS files)."""

    library = "s3torchconnector"

    def __init__(self, endpoint: str, region_name: str, creds: Credentials | None,
                 part_bytes: int, connections: int) -> None:
        super().__init__(endpoint, region_name, creds, part_bytes, connections)
        from s3torchconnector._s3client import S3Client, S3ClientConfig
        aws = endpoint.endswith(".amazonaws.com")
        self._c = S3Client(region_name, endpoint=None if aws else endpoint,
                           s3client_config=S3ClientConfig(
                               part_size=max(self.part_bytes, 5 << 20), force_path_style=not aws))

    def put(self, bucket: str, key: str, data: memoryview) -> None:
        self.put_stream(bucket, key, iter([data]))

    def put_stream(self, bucket: str, key: str, chunks: Iterator[memoryview]) -> int:
        writer = self._c.put_object(bucket, key)
        sent = 0
        for chunk in chunks:
            sent += writer.write(bytes(chunk))   # the binding takes bytes only: one copy
        writer.close()
        return sent

    def get_into(self, bucket: str, key: str, out: memoryview) -> int:
        return read_fully(self._c.get_object(bucket, key), out)

    def get_stream(self, bucket: str, key: str) -> Any:
        return self._c.get_object(bucket, key)

    def list(self, bucket: str, prefix: str) -> list[str]:
        return [o.key for page in self._c.list_objects(bucket, prefix) for o in page.object_info]

    def delete(self, bucket: str, keys: list[str]) -> None:
        for k in keys:
            self._c.delete_object(bucket, k)


CLIENTS: dict[str, type[Client]] = {c.library: c for c in (S3dlioClient, S3TorchClient,
                                                           MinioClient)}
LIBRARIES = tuple(CLIENTS)


def installed() -> list[str]:
    """The libraries importable here (each library's module is named as it is)."""
    return [lib for lib in LIBRARIES if importlib.util.find_spec(lib) is not None]


def open_client(library: str, endpoint: str, region_name: str, part_bytes: int,
                connections: int, where: str = "library") -> Client:
    """The library's client for ``endpoint``, or a ConfigError naming what to install."""
    if library not in CLIENTS:
        raise ConfigError(f"{where}={library!r}: use one of {', '.join(LIBRARIES)}")
    try:
        return CLIENTS[library](endpoint, region_name, credentials(), part_bytes, connections)
    except ImportError as exc:
        raise ConfigError(f"{where}={library}: {exc.name} is not installed; pip install {library}"
                          " or choose another library") from None


class S3Tier(Tier):
    """An S3 bucket prefix (AWS, MinIO, Ceph RGW, ...): one object per slot, PUT and GET."""

    name = "s3"
    deletes = True

    @dataclasses.dataclass(frozen=True)
    class Params:
        bucket: str = ""                   # must exist; the tier never creates or deletes it
        prefix: str = "mpi_kvbench"        # the run writes under prefix/run_id/rank<r>/
        endpoints: list = dataclasses.field(default_factory=list)   # [] = env, else AWS
        library: str = DEFAULT_LIBRARY
        region: str = ""                   # "" = AWS_REGION, AWS_DEFAULT_REGION, us-east-1
        part_size_mb: float = 16.0         # objects above this go up in parts (multipart)
        connections: int = 64              # HTTP connections per rank (>= io_depth)
        allow_foreign: bool = False        # True: share a prefix that holds others' objects
        keep_objects: bool = False         # True: leave this run's objects for inspection

        @property
        def part_bytes(self) -> int:
            return int(self.part_size_mb * MiB)

        def check(self) -> None:
            if not self.bucket:
                raise ConfigError("tiers.<level>.bucket: missing; name an existing bucket")
            choice(self, "tiers.<level>", "library", LIBRARIES)
            for e in self.endpoints:
                if not isinstance(e, str):
                    raise ConfigError(f"tiers.<level>.endpoints: {e!r} is not a URL; give a list"
                                      " of http(s)://host:port")
                check_endpoint(e, "tiers.<level>.endpoints")
            if self.part_size_mb < 5:
                raise ConfigError(f"tiers.<level>.part_size_mb={self.part_size_mb:g}: S3 parts"
                                  " are at least 5 MB; give 5 or more")
            if self.connections < 1:
                raise ConfigError(f"tiers.<level>.connections={self.connections}: give 1 or more")

    def open(self, ctx: RankContext) -> None:
        p = self.params
        where = f"tiers.{self.level}"
        self.region = region(p.region)
        found, self.endpoint_source = endpoints(p.endpoints, self.region)
        for e in found:
            check_endpoint(e, f"{where}.endpoints ({self.endpoint_source})")
        self.endpoints = found
        self.endpoint = found[ctx.rank % len(found)]     # ranks round robin over endpoints
        base = p.prefix.strip("/")
        self.run_prefix = f"{base}/{ctx.run_id}/" if base else f"{ctx.run_id}/"
        self.rank_prefix = f"{self.run_prefix}rank{ctx.rank}/"
        self.client = open_client(p.library, self.endpoint, self.region, p.part_bytes,
                                  p.connections, f"{where}.library")
        # the whole prefix when it must hold nothing foreign; else only this rank's own
        # (on a shared bucket that may hold millions): either listing proves the endpoint,
        # the keys and the bucket before anything is measured
        look = self.rank_prefix if p.allow_foreign else (f"{base}/" if base else "")
        try:
            held = self.client.list(p.bucket, look)
        except Exception as exc:   # noqa: BLE001 - every library raises its own types
            self.client.close()
            err = classify(exc)
            raise ConfigError(f"{where}: {self._explain(err)}") from None
        foreign = [k for k in held if not k.startswith(self.run_prefix)]
        if foreign and not p.allow_foreign:
            self.client.close()
            raise ConfigError(
                f"{where}.prefix: s3://{p.bucket}/{base} holds {len(foreign)} objects this run did"
                f" not create (e.g. {foreign[0]}); choose an empty prefix or set"
                f" {where}.allow_foreign=true")

    def _explain(self, err: StoreError) -> str:
        """One line an operator can act on (a library's message may span lines)."""
        at = f"s3://{self.params.bucket} at {self.endpoint}"
        detail = " ".join(str(err).split())[:240]
        if err.kind == "unreachable":
            return (f"endpoint {self.endpoint} does not answer ({detail}); start the server or fix"
                    f" endpoints / {', '.join(ENDPOINT_VARS)}")
        if err.kind == "credentials":
            return (f"{at} refused the credentials; set AWS_ACCESS_KEY_ID and"
                    " AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to keys it accepts")
        if err.kind == "no_bucket":
            return f"bucket {self.params.bucket!r} does not exist at {self.endpoint}; create it first"
        return f"{at}: {detail}"

    def key(self, slot: int) -> str:
        return f"{self.rank_prefix}{slot}"

    def write(self, slot: int, data: memoryview) -> int:
        with memoryview(data) as view:   # the pool hands mmaps; slicing one would copy
            self.client.put(self.params.bucket, self.key(slot), view)
            return len(view)

    def read(self, slot: int, out: memoryview) -> int:
        with memoryview(out) as view:
            return self.client.get_into(self.params.bucket, self.key(slot), view)

    def drop(self, slot: int) -> None:
        self.client.delete(self.params.bucket, [self.key(slot)])

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is None:
            return
        self.client = None
        if self.params.keep_objects:
            client.close()
            return
        try:   # every object under this rank's prefix is this run's (open refused others)
            client.delete(self.params.bucket, client.list(self.params.bucket, self.rank_prefix))
        finally:
            client.close()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "library": self.params.library, "bucket": self.params.bucket,
                "prefix": self.rank_prefix, "endpoint": self.endpoint,
                "endpoints": list(self.endpoints), "endpoint_source": self.endpoint_source,
                "region": self.region, "part_size_bytes": self.params.part_bytes,
                "multipart": self.object_bytes > self.params.part_bytes}
