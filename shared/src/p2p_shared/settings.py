"""Settings: one pydantic-settings model per service, built once in `main`.

Every flag is also an environment variable `P2P_<FIELD>`; a flag given on the command line wins.
Flags are parsed with argparse (short options, positionals) and passed to the model as
overrides, so the model stays the single source of defaults and validation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogFormat = Literal["auto", "console", "json"]


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="P2P_", extra="ignore")

    log_format: LogFormat = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(0, ge=0, le=65535)
    swarm_secret: SecretStr | None = Field(None, min_length=16)  # from P2P_SWARM_SECRET only

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


class TlsSettings(CommonSettings):
    """The common settings and the TLS files of the chunk channel (seeder and leecher)."""

    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @field_validator("tls_cert", "tls_key", "tls_ca", mode="before")
    @classmethod
    def _unset(cls, value):
        return None if value == "" else value  # P2P_TLS_CA= turns TLS off


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging and metrics")
    group.add_argument("--log-format", choices=["auto", "console", "json"], help="auto: console on a terminal, JSON otherwise")
    group.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    group.add_argument("--metrics-host", help="address the metrics endpoint binds")
    group.add_argument("--metrics-port", type=int, help="Prometheus metrics port; 0 turns it off")


S = TypeVar("S", bound=BaseSettings)


def build_settings(model: type[S], parser: argparse.ArgumentParser, argv: list[str] | None) -> S:
    """Flags override P2P_* variables, which override defaults. Bad values exit 2 with one line."""
    for action in parser._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS  # unset flags fall through to env and defaults
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return model(**given)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        print(f"{parser.prog}: error: {field}: {first['msg']}", file=sys.stderr)
        raise SystemExit(2) from None
