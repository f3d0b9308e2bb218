"""Local paths and URIs (``s3://``, ``gs://``) as one pyarrow filesystem, with the same one-line errors everywhere."""

from __future__ import annotations

import os
from pathlib import Path

from jobs.errors import UserError

META = "meta.json"  # a checkpoint's metadata, written last: it marks the folder whole (jobs.loop, jobs.train)


def is_remote(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def aws_credentials_missing() -> bool:
    """True when no AWS credential source can exist here (an instance role counts unless AWS_EC2_METADATA_DISABLED)."""
    env = os.environ
    sources = "AWS_ACCESS_KEY_ID AWS_PROFILE AWS_WEB_IDENTITY_TOKEN_FILE AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
    if any(env.get(k) for k in [*sources.split(), "AWS_CONTAINER_CREDENTIALS_FULL_URI"]):
        return False
    home = Path.home() / ".aws"
    for var, default in (("AWS_SHARED_CREDENTIALS_FILE", home / "credentials"), ("AWS_CONFIG_FILE", home / "config")):
        if Path(env.get(var) or default).is_file():
            return False
    return env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"


def fs_uri(filesystem, path: str) -> str:
    """A pyarrow filesystem's path as a URI: the path itself on a local disk, else ``s3://...``."""
    scheme = {"gcs": "gs"}.get(filesystem.type_name, filesystem.type_name)
    return path if scheme == "local" else f"{scheme}://{path}"


def short_reason(err: BaseException) -> str:
    """The part of an Arrow/AWS error a user can act on, on one line."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "NETWORK_CONNECTION" in text or "Could not connect" in text or "Couldn't connect" in text:
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "AWS"
        return f"cannot connect to the S3 endpoint {endpoint}"
    return text[:200]


def filesystem(uri: str | os.PathLike, error: type[UserError] = UserError, what: str = "path"):
    """``(pyarrow filesystem, path inside it)``; ``error`` with one line for an unusable URI."""
    import pyarrow.fs as pafs

    uri = str(uri)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    if uri.startswith("s3://") and aws_credentials_missing():
        raise error(
            f"{what} '{uri}': no AWS credentials found — set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE), or run where an instance role provides them"
        )
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError / ValueError for unusable URIs
        raise error(f"{what} '{uri}' is not usable: {short_reason(e)} — check the URI and AWS_* settings") from None
    return fs, path.rstrip("/")


def check_bucket(fs, path: str, uri: str, error: type[UserError] = UserError, what: str = "path") -> None:
    """For an object store: the bucket must exist and answer; a missing key is fine."""
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        return
    bucket = path.split("/", 1)[0]
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise error(f"cannot reach {what} '{uri}': {short_reason(e)} — check the URI and AWS_* settings") from None
    if info.type == pafs.FileType.NotFound:
        raise error(
            f"{what} '{uri}': bucket '{bucket}' does not exist — create it (aws s3 mb s3://{bucket}) or fix the URI"
        )
