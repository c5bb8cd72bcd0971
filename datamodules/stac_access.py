"""Access hooks for STAC assets: an asset href in; what GDAL opens and the GDAL settings it needs out.

Public catalogs differ in how their files are read:

- Earth Search's Sentinel-2 COGs are public HTTPS (:class:`Public`);
- Earth Search's Landsat Collection 2 assets sit in a requester-pays S3 bucket
  (``s3://usgs-landsat``): the reader's AWS account pays the transfer (:class:`RequesterPays`);
- Planetary Computer's blobs are read with a SAS token appended to the href, fetched per
  collection from its token endpoint (:class:`PlanetaryComputer`);
- NASA LP DAAC's HLS files need an Earthdata login (:class:`EarthdataLogin`).

A hook is chosen per catalog (or per collection) in ``conf/stac/*.yaml`` and is called only when
an asset is about to be read: nothing here touches the network at import or construction.
Credentials come from the environment or the usual files, never from the config.

Access rules belong to the href, not to the catalog: each hook asks for credentials only for the
hrefs it governs (the requester-pays buckets, the Planetary Computer's blob hosts, the Earthdata
hosts). A mirror or a static catalog whose hrefs are local paths or other public URLs is read
without credentials whatever preset it is used with.
"""

from __future__ import annotations

import netrc
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from .errors import UserError


class AccessError(UserError):
    """An asset cannot be read with the credentials at hand; the message says what to set."""


@dataclass(frozen=True)
class Access:
    href: str  # what rasterio/GDAL opens (an http(s) URL or a /vsis3/ path)
    env: dict[str, str] = field(default_factory=dict)  # GDAL config options for this read


def gdal_path(href: str) -> str:
    """``s3://b/k`` → ``/vsis3/b/k``, ``gs://`` → ``/vsigs/``; http(s) and local paths unchanged."""
    for scheme, vsi in (("s3://", "/vsis3/"), ("gs://", "/vsigs/")):
        if href.startswith(scheme):
            return vsi + href[len(scheme) :]
    if href.startswith("file://"):
        return urlsplit(href).path
    return href


def on_hosts(href: str, hosts: tuple[str, ...]) -> bool:
    """Is ``href`` an http(s) URL on one of ``hosts`` (``.example.com``: any subdomain)?"""
    if not href.startswith(("http://", "https://")):
        return False
    host = urlsplit(href).hostname or ""
    return any(host == h or (h.startswith(".") and host.endswith(h)) for h in hosts)


def redact(href: str) -> str:
    """An href without its query string (SAS tokens and signatures stay out of messages)."""
    return href.split("?", 1)[0]


class Public:
    """Public files: no credentials (unsigned requests for public S3 buckets)."""

    def __call__(self, href: str, collection: str) -> Access:
        env = {"AWS_NO_SIGN_REQUEST": "YES"} if href.startswith("s3://") else {}
        return Access(gdal_path(href), env)


class RequesterPays:
    """``s3://`` files in the requester-pays ``buckets``; AWS credentials come from the
    environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, or ``AWS_PROFILE`` /
    ``~/.aws``). Any other href (a local path, https, another bucket) is read as public."""

    def __init__(
        self, region: str = "us-west-2", buckets: tuple[str, ...] | list[str] = ("usgs-landsat",)
    ):
        self.region = region
        self.buckets = tuple(buckets)

    def __call__(self, href: str, collection: str) -> Access:
        bucket = href[len("s3://") :].split("/", 1)[0] if href.startswith("s3://") else None
        if bucket not in self.buckets:
            return Public()(href, collection)
        has_keys = bool(os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"))
        aws_dir = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
        if not (has_keys or aws_dir.expanduser().is_file()):
            raise AccessError(
                f"{collection} assets are in a requester-pays bucket ({redact(href)}): reading "
                "them needs AWS credentials, and your AWS account pays the transfer. Set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or use a catalog "
                "that serves them without charge (e.g. --catalog planetary_computer)."
            )
        env = {"AWS_REQUEST_PAYER": "requester", "AWS_REGION": self.region}
        return Access(gdal_path(href), env)


class PlanetaryComputer:
    """Planetary Computer: append a SAS token (per collection, cached until shortly before it
    expires) to hrefs on the given hosts. ``PC_SDK_SUBSCRIPTION_KEY``, when set, is sent along
    (higher rate limits)."""

    def __init__(
        self,
        token_url: str = "https://planetarycomputer.microsoft.com/api/sas/v1/token",
        hosts: tuple[str, ...] | list[str] = (".blob.core.windows.net",),
        timeout: float = 30.0,
        key_env: str = "PC_SDK_SUBSCRIPTION_KEY",
    ):
        self.token_url = token_url.rstrip("/")
        self.hosts = tuple(hosts)
        self.timeout = timeout
        self.key_env = key_env
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # sent to a cluster's workers: each asks for its own tokens
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_tokens")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _tokens={}, _lock=threading.Lock())

    def __call__(self, href: str, collection: str) -> Access:
        if not on_hosts(href, self.hosts):
            return Public()(href, collection)
        token = self.token(collection)
        return Access(f"{href}{'&' if '?' in href else '?'}{token}")

    def token(self, collection: str) -> str:
        with self._lock:
            hit = self._tokens.get(collection)
            if hit and hit[1] > time.time() + 300:
                return hit[0]
            token, expiry = self._fetch(collection)
            self._tokens[collection] = (token, expiry)
            return token

    def _fetch(self, collection: str) -> tuple[str, float]:
        import requests

        headers = {}
        if os.environ.get(self.key_env):
            headers["Ocp-Apim-Subscription-Key"] = os.environ[self.key_env]
        url = f"{self.token_url}/{collection}"
        try:
            r = requests.get(url, headers=headers, timeout=self.timeout)
        except requests.RequestException as e:
            raise AccessError(f"cannot get a read token for {collection} from {url}: {e}") from None
        if r.status_code != 200:
            raise AccessError(
                f"the token endpoint {url} answered {r.status_code} for {collection}: "
                f"{r.text[:200]}. Set {self.key_env} if the service asks for a subscription key."
            )
        body = r.json()
        expiry = body.get("msft:expiry")
        try:
            stamp = datetime.fromisoformat(expiry.replace("Z", "+00:00")).timestamp()
        except (AttributeError, ValueError):
            stamp = time.time() + 600  # no usable expiry: ask again in 10 minutes
        return body["token"].lstrip("?"), stamp


class EarthdataLogin:
    """NASA Earthdata Cloud files (LP DAAC's HLS) on the given ``hosts``: a bearer token from
    ``EARTHDATA_TOKEN`` (urs.earthdata.nasa.gov → Generate Token), sent by GDAL as an
    ``Authorization`` header; or a ``~/.netrc`` entry for the login host, which GDAL follows
    through the login redirect. Hrefs on other hosts and local paths are read as public."""

    def __init__(
        self,
        token_env: str = "EARTHDATA_TOKEN",
        login_host: str = "urs.earthdata.nasa.gov",
        cookie_file: str = "~/.geotune/earthdata-cookies.txt",
        hosts: tuple[str, ...] | list[str] = (".earthdatacloud.nasa.gov", ".earthdata.nasa.gov"),
    ):
        self.token_env = token_env
        self.login_host = login_host
        self.cookie_file = cookie_file
        self.hosts = tuple(hosts)

    def __call__(self, href: str, collection: str) -> Access:
        if not on_hosts(href, self.hosts):
            return Public()(href, collection)
        token = os.environ.get(self.token_env)
        if token:
            return Access(gdal_path(href), {"GDAL_HTTP_HEADERS": f"Authorization: Bearer {token}"})
        path = Path(os.environ.get("NETRC", "~/.netrc")).expanduser()
        try:
            login = netrc.netrc(path).authenticators(self.login_host) if path.is_file() else None
        except (netrc.NetrcParseError, OSError):
            login = None
        if login is None:
            raise AccessError(
                f"{collection} assets need an Earthdata login: set {self.token_env} to a token "
                f"made at https://{self.login_host} (Generate Token), or add "
                f"'machine {self.login_host} login USER password PASSWORD' to {path}."
            )
        cookies = str(Path(self.cookie_file).expanduser())
        Path(cookies).parent.mkdir(parents=True, exist_ok=True)
        env = {
            "GDAL_HTTP_NETRC": "YES",
            "GDAL_HTTP_NETRC_FILE": str(path),
            "GDAL_HTTP_COOKIEFILE": cookies,
            "GDAL_HTTP_COOKIEJAR": cookies,
        }
        return Access(gdal_path(href), env)


__all__ = [
    "Access",
    "AccessError",
    "EarthdataLogin",
    "PlanetaryComputer",
    "Public",
    "RequesterPays",
    "gdal_path",
    "on_hosts",
    "redact",
]
