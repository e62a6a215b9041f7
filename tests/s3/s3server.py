"""A real S3 server on 127.0.0.1 for the tests and benchmarks: moto's standalone server,
started as a subprocess on a free port and stopped afterwards.

With ``auth=True`` moto checks signatures against its own IAM: the first few requests
(``INITIAL_NO_AUTH_ACTION_COUNT``) create a user, its access key and a policy, and from
then on only that key is accepted, so a test can show that wrong keys are refused.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    url: str
    proc: subprocess.Popen
    key: str = "testing"
    secret: str = "testing"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach this server (endpoint and keys)."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": self.key,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def boto(self, service: str = "s3", key: str | None = None, secret: str | None = None):
        """An independent client (boto3, moto's own dependency) to look at the server."""
        import boto3
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=key or self.key,
                            aws_secret_access_key=secret or self.secret)

    def objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix``: key -> size, as the server lists them."""
        out = {}
        for page in self.boto().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                          Prefix=prefix):
            out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(auth: bool = False, timeout_s: float = 60) -> S3Server:
    port = free_port()
    env = {**os.environ, "MOTO_PORT": str(port)}
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    server = S3Server(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + timeout_s
    while True:   # ready when it answers; its start-up takes seconds on a busy machine
        try:
            urllib.request.urlopen(f"{server.url}/moto-api/data.json", timeout=2).read()
            break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto server did not start on port {port}") from None
            time.sleep(0.1)
    if auth:
        iam = server.boto("iam")
        iam.create_user(UserName="kv")
        made = iam.create_access_key(UserName="kv")["AccessKey"]
        iam.put_user_policy(UserName="kv", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        server.key, server.secret = made["AccessKeyId"], made["SecretAccessKey"]
    return server
