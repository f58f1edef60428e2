"""Configuration: one TOML file plus environment variables, validated with pydantic.

Environment variables override the file: ``CHARGING_<SECTION>__<KEY>`` (double
underscore between levels), e.g. ``CHARGING_DATABASE__URL=postgresql+psycopg://...``
or ``CHARGING_KAFKA__BOOTSTRAP=broker:9092``.  Values are parsed as JSON where they
parse (numbers, booleans, lists), else taken as strings.  Every error names the key
and says why.  ``config/charging.example.toml`` documents every key.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from billing.settings import BillingSettings
from cdf.bx.settings import BxSettings
from cdf.settings import CdfSettings
from charging.gwf.settings import GwfSettings
from ocf.settings import OcfSettings

ENV_PREFIX = "CHARGING_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatabaseSettings(_Section):
    url: str = "sqlite:///var/charging.db"
    migrate_on_start: bool = True
    pool_size: int = Field(default=5, ge=1, le=100)


class KafkaSettings(_Section):
    bootstrap: str | None = None  # None: start the embedded broker (tansu) as a child process
    embedded_port: int = Field(default=0, ge=0, le=65535)  # 0 picks a free port
    cdr_topic: str = "charging.cdrs"
    dead_letter_topic: str = "charging.cdrs.dead-letter"
    partitions: int = Field(default=4, ge=1, le=1024)


class PeerSettings(_Section):
    host: str  # the peer's Origin-Host
    realm: str = ""
    address: str | None = None  # dial target and the only source address accepted for this peer
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: bool = False
    dial: bool = True


class TlsSettings(_Section):
    certfile: str
    keyfile: str
    cafile: str | None = None
    verify_peer: bool = True


class DiameterSettings(_Section):
    origin_host: str = "charging.localdomain"
    origin_realm: str = "localdomain"
    listen_address: str = "127.0.0.1"
    port: int = Field(default=3868, ge=0, le=65535)
    tls_port: int | None = Field(default=None, ge=0, le=65535)
    tls: TlsSettings | None = None
    host_ip_addresses: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    peers: list[PeerSettings] = Field(default_factory=list)
    allowed_realms: list[str] = Field(default_factory=list)
    # On the embedded defaults peers from loopback are accepted unconfigured, so a first client just works.
    allowed_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    strict: bool = False
    watchdog_seconds: float = Field(default=30.0, gt=0)
    request_timeout_seconds: float = Field(default=5.0, gt=0)
    duplicate_window_seconds: float = Field(default=10.0, ge=0)

    @field_validator("origin_host", "origin_realm")
    @classmethod
    def _identity(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value) or not value.isascii():
            raise ValueError("must be an ASCII DiameterIdentity without spaces")
        return value


class HttpSettings(_Section):
    listen_address: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    read_tokens: list[str] = Field(default_factory=list)
    admin_tokens: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # how often the services count their state in the database (open sessions, outbox backlog) for /metrics
    metrics_sample_seconds: float = Field(default=15.0, gt=0)


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


Role = Literal["cdf", "ocf", "billing"]
ALL_ROLES: list[Role] = ["cdf", "ocf", "billing"]


class Settings(_Section):
    roles: list[Role] = Field(default_factory=lambda: list(ALL_ROLES))
    node_id: str = "charging-1"  # names this process in CDRs and logs; unique per instance
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    diameter: DiameterSettings = Field(default_factory=DiameterSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    ocf: OcfSettings = Field(default_factory=OcfSettings)
    cdf: CdfSettings = Field(default_factory=CdfSettings)
    bx: BxSettings = Field(default_factory=BxSettings)  # TS 32.297 CDR files beside Kafka (docs/cdr-files.md)
    gwf: GwfSettings = Field(default_factory=GwfSettings)  # `charging gwf`, the IMS-GWF (docs/gwf.md)
    billing: BillingSettings = Field(default_factory=BillingSettings)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each key and why."""


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    top_level = {n.upper() for n, f in Settings.model_fields.items() if not _is_section(f.annotation)}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :]
        if "__" not in key and key not in top_level:
            continue  # e.g. CHARGING_CONFIG, the file's path, is not a setting
        path = [p.lower() for p in key.split("__")]
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(path)} cannot be both a value and a section")
        node[path[-1]] = value
    return tree


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    data = _merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()]
        source = str(path) if path else "configuration"
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None


# -- the documented example ---------------------------------------------------------------------


def _field_comments(model: type[BaseModel]) -> dict[str, list[str]]:
    """The comments written beside and above each field in the model's source: its documentation."""
    import inspect

    try:
        lines = inspect.getsource(model).splitlines()
    except (OSError, TypeError):
        return {}
    comments: dict[str, list[str]] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").rstrip())
            continue
        name = stripped.split(":", 1)[0]
        if name in model.model_fields and ":" in stripped:
            inline = stripped.split("  # ", 1)[1].strip() if "  # " in stripped else ""
            comments[name] = [*above, *([inline] if inline else [])]
        above = []
    return comments


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _example_section(model: type[BaseModel], instance: BaseModel, path: str, out: list[str]) -> None:
    comments = _field_comments(model)
    nested: list[tuple[str, type[BaseModel], BaseModel]] = []
    if path:
        out.append(f"\n[{path}]")
        doc = (model.__doc__ or "").strip().splitlines()
        if doc and not doc[0].startswith("Usage docs"):
            out.append(f"# {doc[0]}")
    for name in model.model_fields:
        value = getattr(instance, name)
        if isinstance(value, BaseModel):
            nested.append((name, type(value), value))
            continue
        for line in comments.get(name, []):
            out.append(f"# {line}")
        if value is None:
            out.append(f"# {name} =   (not set)")
        else:
            data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
            if isinstance(data, list) and data and isinstance(data[0], BaseModel):
                data = [d.model_dump(mode="json") for d in data]
            out.append(f"{name} = {_toml_value(_jsonable(data))}")
    for name, sub_model, sub in nested:
        _example_section(sub_model, sub, f"{path}.{name}" if path else name, out)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def example_toml() -> str:
    """Every key with its default and its documentation: ``config/charging.example.toml``."""
    out = [
        "# charging: the documented configuration, every key at its default.",
        "# Generated by `charging config example`; environment variables override it:",
        "# CHARGING_<SECTION>__<KEY>, e.g. CHARGING_DATABASE__URL or CHARGING_KAFKA__BOOTSTRAP.",
    ]
    _example_section(Settings, Settings(), "", out)
    return "\n".join(out) + "\n"
