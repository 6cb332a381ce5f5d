"""The upstream registries a mirror pulls from, and its HTTP client to them (aiohttp's).

`--registry NAME=URL` names each upstream: NAME is what clients call it (containerd's `?ns=`,
`docker.io`, `localhost:5000`), URL where it answers. Credentials come from a Docker
`config.json` (`auths`: a base64 `auth`, or `username` and `password`). The distribution token
flow is followed: a `401` with `WWW-Authenticate: Bearer realm=...,service=...,scope=...` sends
us to the realm for a token (with our credentials, if any), kept until it expires; a `Basic`
challenge gets the credentials themselves.
"""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import structlog

from p2p_shared.errors import P2PError

log = structlog.get_logger()

DOCKER_HUB = "docker.io"
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", DOCKER_HUB)
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
MAX_TOKENS = 1024


@dataclass(frozen=True)
class Upstream:
    name: str
    url: str  # scheme://host[:port], no trailing slash
    credentials: tuple[str, str] | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


def parse_registries(values: list[str], auth_file: Path | None) -> dict[str, Upstream]:
    """The `--registry NAME=URL` values, with their credentials from `auth_file`. ValueError
    says which value is wrong."""
    auths = load_auths(auth_file) if auth_file is not None else {}
    found: dict[str, Upstream] = {}
    for value in values:
        name, eq, url = value.partition("=")
        name, url = name.strip(), url.strip().rstrip("/")
        parts = urlsplit(url)
        if not eq or not name or parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(f"--registry {value!r}: give NAME=URL, such as docker.io=https://registry-1.docker.io")
        keys = (name, parts.netloc, url) + (_HUB_KEYS if name == DOCKER_HUB else ())
        credentials = next((auths[k] for k in keys if k in auths), None)
        found[name] = Upstream(name, url, credentials)
    return found


def load_auths(path: Path) -> dict[str, tuple[str, str]]:
    """A Docker config.json's `auths`: registry -> (user, password); the keys as written there
    and without their scheme."""
    try:
        config = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    auths: dict[str, tuple[str, str]] = {}
    for key, entry in (config.get("auths") or {}).items():
        if not isinstance(entry, dict):
            continue
        user, password = entry.get("username"), entry.get("password")
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"{path}: the auth of {key} is not base64 of user:password") from None
        if user and password is not None:
            auths[key] = auths[key.split("://", 1)[-1].rstrip("/")] = (user, password)
    return auths


class UpstreamError(P2PError):
    """The upstream did not answer, or not usefully; `status` is what the mirror answers."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class UpstreamClient:
    """Requests to upstream registries, authorized as each asks."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}  # (upstream, repository) -> header, until

    async def start(self) -> None:
        # A short connect timeout: a mirror whose upstream is down answers at once, so that the
        # client moves on; a body may take as long as it takes, one read at a time.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=60)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, upstream: Upstream, method: str, repository: str, path: str, headers: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """`method` of `upstream.url + path`, authorized; the response (release it). A failure to
        connect is UpstreamError 503 at once."""
        assert self._session is not None, "start the client first"
        headers = dict(headers or {})
        key = (upstream.name, repository)
        held = self._tokens.get(key)
        if held is not None and held[1] > time.monotonic():
            headers["Authorization"] = held[0]
        for attempt in range(2):
            try:
                response = await self._session.request(method, upstream.url + path, headers=headers)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise UpstreamError(503, "UNAVAILABLE", f"upstream {upstream.name} ({upstream.url}) unreachable: {exc or type(exc).__name__}") from None
            if response.status != 401 or attempt:
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            response.release()
            authorization = await self._authorize(upstream, challenge)
            if authorization is None:
                raise UpstreamError(401, "UNAUTHORIZED", f"upstream {upstream.name} wants credentials we do not have (--registry-auth)")
            headers["Authorization"] = authorization[0]
            if len(self._tokens) >= MAX_TOKENS:
                self._tokens.clear()
            self._tokens[key] = authorization
        raise AssertionError("unreachable")

    async def _authorize(self, upstream: Upstream, challenge: str) -> tuple[str, float] | None:
        """The Authorization header a challenge asks for, and until when to use it."""
        scheme, _, rest = challenge.partition(" ")
        params = dict(_CHALLENGE.findall(rest))
        if scheme.lower() == "basic":
            if upstream.credentials is None:
                return None
            user, password = upstream.credentials
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(), time.monotonic() + 3600
        if scheme.lower() != "bearer" or "realm" not in params:
            return None
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        auth = aiohttp.BasicAuth(*upstream.credentials) if upstream.credentials else None
        assert self._session is not None
        try:
            async with self._session.get(params["realm"], params=query, auth=auth) as response:
                if response.status != 200:
                    raise UpstreamError(502, "DENIED", f"upstream {upstream.name}'s token service answered {response.status}")
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise UpstreamError(503, "UNAVAILABLE", f"upstream {upstream.name}'s token service failed: {exc or type(exc).__name__}") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise UpstreamError(502, "DENIED", f"upstream {upstream.name}'s token service sent no token")
        lifetime = float(body.get("expires_in") or 60)
        return f"Bearer {token}", time.monotonic() + max(10.0, lifetime - 10)
