"""A local S3 for tests: moto's server on 127.0.0.1 with one bucket, and the environment that points pyarrow,
Lance and Ray workers at it (no traffic leaves this machine).

Ray workers get their environment from the raylet, which copies the driver's environment when Ray starts: a
Ray started before `s3_server()` sets the variables never sees them (a task can still be given them with
`.options(runtime_env={"env_vars": server.env})`, at the cost of a fresh worker). Start the server first; the
`s3_bucket` fixture in tests/conftest.py sees to that for the embedded Ray of `ray_session`.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

BUCKET = "lumos-test"

# Cleared while the server runs, so that nothing from the developer's own AWS setup redirects or signs requests.
CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT",
           "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
           "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
           "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST")


@dataclass(frozen=True)
class S3Server:
    uri: str  # s3://lumos-test
    endpoint: str  # http://127.0.0.1:<port>
    env: dict[str, str]  # what a subprocess or a Ray runtime_env needs to reach the bucket


def s3_env(endpoint: str) -> dict[str, str]:
    """The variables that point pyarrow (AWS SDK) and Lance (object_store) at `endpoint`; see lumos.floor.fs."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,  # pyarrow and Lance
        "AWS_ALLOW_HTTP": "true",  # Lance: a plain-HTTP endpoint is refused without it
        "AWS_EC2_METADATA_DISABLED": "true",  # the AWS SDK never probes 169.254.169.254
        "AWS_CONFIG_FILE": os.devnull,  # nor reads the developer's ~/.aws
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


@contextmanager
def s3_server(bucket: str = BUCKET):
    """Run moto's S3 on 127.0.0.1 (a free port) with `bucket` made, the environment set; yields an S3Server.
    The environment is put back as it was, and the server stopped, on exit."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    requests = logging.getLogger("werkzeug")  # one INFO line per request: kept out of test reports
    level = requests.level
    requests.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = {name: os.environ.get(name) for name in (*CLEARED, *s3_env(""))}
    try:
        host, port = server.get_host_and_port()
        assert host == "127.0.0.1", host
        endpoint = f"http://127.0.0.1:{port}"
        env = s3_env(endpoint)
        for name in CLEARED:
            os.environ.pop(name, None)
        os.environ.update(env)
        pafs.S3FileSystem(endpoint_override=endpoint, region=env["AWS_REGION"],
                          allow_bucket_creation=True).create_dir(bucket)
        yield S3Server(uri=f"s3://{bucket}", endpoint=endpoint, env=env)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
        requests.setLevel(level)
