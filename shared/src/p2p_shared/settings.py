"""Settings: one pydantic-settings model per service, built once in `main`.

Every flag is also an environment variable `P2P_<FIELD>`; a flag given on the command line wins.
Flags are parsed with argparse (short options, positionals) and passed to the model as
overrides, so the model stays the single source of defaults and validation.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogFormat = Literal["auto", "console", "json"]


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="P2P_", extra="ignore")

    log_format: LogFormat = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(0, ge=0, le=65535)
    swarm_secret: SecretStr | None = Field(None, min_length=16)  # from P2P_SWARM_SECRET only
    health_file: Path | None = None

    @field_validator("swarm_secret", mode="before")
    @classmethod
    def _no_empty_secret(cls, value):
        return None if value == "" else value  # compose passes P2P_SWARM_SECRET= when unset

    def secret_bytes(self) -> bytes | None:
        return self.swarm_secret.get_secret_value().encode() if self.swarm_secret else None

    def warn_if_open(self, log, role: str) -> None:
        if self.swarm_secret is None:
            log.warning(f"no swarm secret (P2P_SWARM_SECRET): any host that reaches this {role} is trusted")


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """'host:port', '[v6]:port', or a bare host (or bare IPv6 address) with `default_port`."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not port and default_port is not None:
        port = str(default_port)
    if not host:
        raise ValueError(f"{text!r} has no host")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT with a port from 1 to 65535")
    return host, int(port)


def parse_trackers(text: str, default_port: int | None = None) -> list[tuple[str, int]]:
    """'a:6969,b:6969': the replicas of one tracker, each HOST:PORT. One name may also stand
    for several replicas, by resolving to several addresses."""
    trackers = [parse_host_port(part.strip(), default_port) for part in text.split(",") if part.strip()]
    if not trackers:
        raise ValueError(f"{text!r} names no tracker")
    return trackers


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}


def parse_size(value) -> int:
    """Bytes, or a number with a unit: `500MiB`, `20GiB`, `1.5GB` (KiB, MiB, GiB, TiB are powers
    of 1024; KB, MB, GB, TB and K, M, G, T of 1000)."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{value!r} is not a size: bytes, or a number with a unit such as 500MiB or 20GiB")
    return int(float(match.group(1)) * _UNITS[unit])


Size = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]

Endpoint = tuple[str, int]  # a host name or address, and a port


def show_endpoints(endpoints) -> str:
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in endpoints)


def _trackers(value):
    return tuple(parse_trackers(value)) if isinstance(value, str) else value


# The replicas of one tracker, parsed once from `a:6969,b:6969` (a flag or P2P_TRACKER).
Trackers = Annotated[tuple[Endpoint, ...], NoDecode, BeforeValidator(_trackers)]


class TlsSettings(CommonSettings):
    """The common settings and the TLS files of the chunk channel (seeder and leecher)."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @field_validator("tls_cert", "tls_key", "tls_ca", mode="before")
    @classmethod
    def _unset(cls, value):
        return None if value == "" else value  # P2P_TLS_CA= turns TLS off


class ServingSettings(TlsSettings):
    """What every peer server takes, a seeder's or a sharing leecher's: its limits and the
    address peers should use."""

    advertise_host: str | None = None
    max_upload_rate: float = Field(0, ge=0)
    max_connections: int = Field(1024, ge=1)  # bench.sim: 1,000 peers at 256 took 4.25x the bound and 2.1 F; at 1024, 2.02x and 1.0 F
    max_connections_per_address: int = Field(64, ge=1)
    connection_timeout: float = Field(90.0, gt=0)
    handshake_timeout: float = Field(10.0, gt=0)


class EngineSettings(ServingSettings):
    """What a host's engine takes (p2p_shared.net.engine): the tracker, and its peer server's limits."""

    tracker: Trackers = (("127.0.0.1", 6969),)


class DownloadSettings(EngineSettings):
    """What each download of an engine takes (p2p_shared.net.download)."""

    min_seeders: int = Field(1, ge=1)
    wait: float = Field(30.0, ge=0)
    wait_for_file: bool = False
    max_peers: int = Field(8, ge=1, le=50)
    pipeline_depth: int = Field(4, ge=1, le=64)
    chunk_timeout: float = Field(30.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)
    max_bad_chunks: int = Field(3, ge=1)
    max_download_rate: float = Field(0, ge=0)
    refresh_interval: float = Field(5.0, gt=0)  # seconds between lookups while downloading, at most


def add_download_flags(group) -> None:
    """The flags of DownloadSettings (the tracker's aside), on a parser or an argument group."""
    group.add_argument("--min-seeders", type=int, help="seeders to wait for before starting (default 1)")
    group.add_argument("--wait", type=float, help="seconds to wait for seeders at start, and without a verified chunk during the download, before giving up (default 30)")
    group.add_argument("--wait-for-file", action="store_true", default=None, help="wait (--wait seconds) for a file the tracker does not know yet, instead of failing at once")
    group.add_argument("--max-peers", type=int, help="seeders downloaded from at once (default 8)")
    group.add_argument("--pipeline-depth", type=int, help="requests in flight per seeder (default 4)")
    group.add_argument("--chunk-timeout", type=float, help="seconds a seeder may stay silent with requests pending (default 30)")
    group.add_argument("--connect-timeout", type=float, help="seconds to connect and greet a seeder (default 5)")
    group.add_argument("--max-bad-chunks", type=int, help="bad chunks before a seeder is dropped (default 3)")
    group.add_argument("--max-download-rate", type=float, help="bytes/s from all seeders together; 0 (default) is unlimited")


def add_serving_flags(group) -> None:
    """The flags of ServingSettings, on a parser or an argument group."""
    group.add_argument("--advertise-host", help="address peers should use; the tracker sees our source address otherwise")
    group.add_argument("--max-upload-rate", type=float, help="bytes/s sent to all peers together; 0 is unlimited")
    group.add_argument("--max-connections", type=int, help="peer connections served at once")
    group.add_argument("--max-connections-per-address", type=int, help="connections served to one address at once")
    group.add_argument("--connection-timeout", type=float, help="seconds an idle peer connection stays open")
    group.add_argument("--handshake-timeout", type=float, help="seconds a new connection has to complete its HELLO (and TLS)")


def package_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version(parser.prog)}")
    group = parser.add_argument_group("logging and metrics")
    group.add_argument("--log-format", choices=["auto", "console", "json"], help="auto: console on a terminal, JSON otherwise")
    group.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    group.add_argument("--metrics-host", help="address the metrics endpoint binds")
    group.add_argument("--metrics-port", type=int, help="Prometheus metrics port; 0 turns it off")
    group.add_argument("--health-file", type=Path, help="a file kept fresh while the service is healthy (for container healthchecks)")


S = TypeVar("S", bound=BaseSettings)

# pydantic's error types, said in our words; anything else falls back to pydantic's message.
_WORDS = {
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
    "literal_error": "must be one of {expected}",
    "string_too_short": "must be at least {min_length} characters long",
    "too_short": "must be at least {min_length} characters long",
    "missing": "is required",
}


def env_name(field: str) -> str:
    return f"P2P_{field.upper()}"


def _flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each setting's name as a user gives it: `--min-seeders (P2P_MIN_SEEDERS)`."""
    names = {}
    for action in parser._actions:
        if action.option_strings:
            names[action.dest] = f"{max(action.option_strings, key=len)} ({env_name(action.dest)})"
        elif action.dest != "help":
            names[action.dest] = f"{action.dest.upper()} ({env_name(action.dest)})"
    return names


def describe_error(error: dict, names: dict[str, str]) -> str:
    """One pydantic error as one line that names the flag and its variable."""
    field = str(error["loc"][0]) if error["loc"] else "settings"
    name = names.get(field, env_name(field))
    if error["type"] == "value_error":
        what = str(error["ctx"]["error"])
    elif error["type"] in _WORDS:
        what = _WORDS[error["type"]].format(**error.get("ctx", {}))
    else:
        what = error["msg"][:1].lower() + error["msg"][1:]
    secret = "secret" in field
    # Our own validators' messages quote the value already.
    quiet = secret or error["type"] in ("missing", "value_error")
    given = "" if quiet else f", not {error['input']!r}"
    return f"{name} {what}{given}"


def _document(parser: argparse.ArgumentParser, model: type[BaseSettings]) -> None:
    """Every flag's help ends with its variable and default, taken from the model itself."""
    for action in parser._actions:
        field = model.model_fields.get(action.dest)
        if field is None:
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(str(d) for d in default)
        elif isinstance(default, tuple):
            default = show_endpoints(default)
        shown = {None: "unset", False: "off", True: "on"}.get(default, default)
        text = re.sub(r"\s*\(default [^()]*\)", "", action.help or "")
        text = re.sub(r"\s*\(env P2P_\w+\)", "", text)
        action.help = f"{text} [{env_name(action.dest)}; default: {shown}]".strip()


def build_settings(model: type[S], parser: argparse.ArgumentParser, argv: list[str] | None) -> S:
    """Flags override P2P_* variables, which override defaults. Bad values exit 2 with one line."""
    _document(parser, model)
    for action in parser._actions:
        if action.dest not in ("help", "version"):
            action.default = argparse.SUPPRESS  # unset flags fall through to env and defaults
        if action.dest in model.model_fields:
            action.type = None  # the model converts and checks flags and variables alike
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return model(**given)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        print(f"{parser.prog}: error: {describe_error(first, _flag_names(parser))}", file=sys.stderr)
        raise SystemExit(2) from None
