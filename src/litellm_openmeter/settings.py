"""Configuration: read once from the environment, validated, immutable.

Every setting has an environment variable (the same names LiteLLM's built-in
OpenMeter logger reads, plus new ones) and a keyword override of the same name in
lower case without the ``OPENMETER_`` prefix.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

EventShape = Literal["litellm", "tokens"]

SUBJECT_SOURCES: tuple[str, ...] = (
    "user",
    "key_user_id",
    "end_user",
    "team_id",
    "key_alias",
    "org_id",
)
"""Names accepted by ``OPENMETER_SUBJECT_FROM``, in the order they may be tried."""

DEFAULT_ENDPOINT = "https://openmeter.cloud"
DEFAULT_EVENT_TYPE = "litellm_tokens"
DEFAULT_TOKENS_EVENT_TYPE = "prompt"
DEFAULT_SOURCE = "litellm-proxy"

SubjectResolver = Callable[[Mapping[str, str]], "str | None"]
"""A custom subject rule: gets the known identities by name, returns the subject."""


class SettingsError(ValueError):
    """A setting is missing or has a value that cannot be used.

    ``problem`` says what is wrong (naming the variable), ``fix`` what to do; the
    message is both, on one line.
    """

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(f"{problem}; {fix}" if fix else problem)
        self.problem = problem
        self.fix = fix


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def default_outbox_path() -> Path:
    """The outbox file used when ``OPENMETER_OUTBOX_PATH`` is not set."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "litellm-openmeter" / "outbox.sqlite3"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and any loopback IP address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """Everything the logger, the outbox and the sender need, validated.

    Build it with :meth:`from_env`; the API key never appears in ``repr``.
    """

    api_key: str = field(repr=False)
    endpoint: str = DEFAULT_ENDPOINT
    event_type: str = DEFAULT_EVENT_TYPE
    event_shape: EventShape = "litellm"
    source: str = DEFAULT_SOURCE
    trust_request_user: bool = True
    subject_from: tuple[str, ...] = ("user", "key_user_id")
    meter_failures: bool = False
    outbox_path: Path = field(default_factory=default_outbox_path)
    batch_size: int = 100
    flush_interval: float = 1.0
    retry_max_delay: float = 60.0
    outbox_max_bytes: int = 1024**3
    shutdown_timeout: float = 5.0
    http_timeout: float = 10.0
    handle_sigterm: bool = True
    unfinished_after: float = 300.0
    meter_unfinished: bool = False

    @property
    def events_url(self) -> str:
        """The ingest URL: ``{endpoint}/api/v1/events``."""
        return self.endpoint.rstrip("/") + "/api/v1/events"

    @property
    def failure_event_type(self) -> str:
        """Event type of failed-call events: ``<type>_failure``."""
        return f"{self.event_type}_failure"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, /, **overrides: object) -> Settings:
        """Read and validate the settings.

        ``env`` defaults to ``os.environ``. A keyword override (``api_key=...``,
        ``event_shape="tokens"``, ...) wins over the environment.
        """
        source_env = os.environ if env is None else env
        reader = _Reader(source_env, overrides)
        api_key = reader.text("OPENMETER_API_KEY", None)
        if not api_key:
            raise SettingsError(
                "Missing keys=['OPENMETER_API_KEY'] in environment",
                "set OPENMETER_API_KEY to your OpenMeter API token (any non-empty "
                "value for a local server without auth)",
            )
        shape = reader.choice("OPENMETER_EVENT_SHAPE", ("litellm", "tokens"), "litellm")
        default_type = DEFAULT_TOKENS_EVENT_TYPE if shape == "tokens" else DEFAULT_EVENT_TYPE
        endpoint = reader.text("OPENMETER_API_ENDPOINT", DEFAULT_ENDPOINT) or DEFAULT_ENDPOINT
        _check_endpoint(endpoint)
        trust = reader.boolean("OPENMETER_TRUST_REQUEST_USER", True)
        subject_from = reader.subject_order(trust)
        settings = cls(
            api_key=api_key,
            endpoint=endpoint.rstrip("/"),
            event_type=reader.nonempty("OPENMETER_EVENT_TYPE", default_type),
            event_shape="tokens" if shape == "tokens" else "litellm",
            source=reader.nonempty("OPENMETER_SOURCE", DEFAULT_SOURCE),
            trust_request_user=trust,
            subject_from=subject_from,
            meter_failures=reader.boolean("OPENMETER_METER_FAILURES", False),
            outbox_path=Path(
                reader.text("OPENMETER_OUTBOX_PATH", None) or default_outbox_path()
            ).expanduser(),
            batch_size=int(reader.number("OPENMETER_BATCH_SIZE", 100, integer=True, low=1)),
            flush_interval=reader.number("OPENMETER_FLUSH_INTERVAL", 1.0, low=0.001),
            retry_max_delay=reader.number("OPENMETER_RETRY_MAX_DELAY", 60.0, low=0.001),
            outbox_max_bytes=int(
                reader.number("OPENMETER_OUTBOX_MAX_BYTES", 1024**3, integer=True, low=1)
            ),
            shutdown_timeout=reader.number("OPENMETER_SHUTDOWN_TIMEOUT", 5.0, low=0.0),
            http_timeout=reader.number("OPENMETER_HTTP_TIMEOUT", 10.0, low=0.001),
            handle_sigterm=reader.boolean("OPENMETER_HANDLE_SIGTERM", True),
            unfinished_after=reader.number("OPENMETER_UNFINISHED_AFTER", 300.0, low=0.001),
            meter_unfinished=reader.boolean("OPENMETER_METER_UNFINISHED", False),
        )
        reader.reject_unknown_overrides()
        return settings


def _check_endpoint(endpoint: str) -> None:
    fix = "use https://host[:port] (for example https://openmeter.cloud)"
    try:
        parts = urlsplit(endpoint)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        raise SettingsError(
            f"OPENMETER_API_ENDPOINT={endpoint!r} is not a URL (bad host or port)", fix
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise SettingsError(f"OPENMETER_API_ENDPOINT={endpoint!r} is not a URL", fix)
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise SettingsError(
            f"OPENMETER_API_ENDPOINT={endpoint!r} uses plain http to a non-loopback "
            "host, which would send OPENMETER_API_KEY unencrypted",
            "use https (plain http is allowed only for 127.0.0.1, ::1 and localhost)",
        )


class _Reader:
    """Reads one variable at a time from overrides, then the environment."""

    def __init__(self, env: Mapping[str, str], overrides: Mapping[str, object]) -> None:
        self._env = env
        self._overrides = dict(overrides)
        self._used: set[str] = set()

    def _raw(self, name: str) -> object | None:
        key = name.removeprefix("OPENMETER_").lower()
        for candidate in (key, *_ALIASES.get(key, ())):
            if candidate in self._overrides:
                self._used.add(candidate)
                return self._overrides[candidate]
        return self._env.get(name)

    def text(self, name: str, default: str | None) -> str | None:
        value = self._raw(name)
        if value is None:
            return default
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise SettingsError(
                f"{name} must be a string, got {type(value).__name__}", f"pass {name} as text"
            )
        return value

    def nonempty(self, name: str, default: str) -> str:
        value = self.text(name, default)
        if value is None or not value.strip():
            raise SettingsError(
                f"{name} must not be empty", f"set it, or unset it for the default {default!r}"
            )
        return value.strip()

    def choice(self, name: str, accepted: tuple[str, ...], default: str) -> str:
        value = (self.text(name, default) or default).strip().lower()
        if value not in accepted:
            raise SettingsError(
                f"{name}={value!r} is not valid",
                f"accepted values are {', '.join(accepted)} (default {default})",
            )
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise SettingsError(
            f"{name}={value!r} is not a boolean",
            f"use true or false (also 1/0, yes/no, on/off; default {str(default).lower()})",
        )

    def number(
        self, name: str, default: float, *, integer: bool = False, low: float = 0.0
    ) -> float:
        value = self._raw(name)
        if value is None:
            return default
        kind = "a whole number" if integer else "a number"
        shown = int(default) if integer else default
        fix = f"set it to {kind} of at least {low:g}, or unset it for the default {shown}"
        try:
            if isinstance(value, bool):
                raise ValueError
            parsed = int(str(value).strip()) if integer else float(str(value))
        except ValueError:
            raise SettingsError(f"{name}={value!r} is not {kind}", fix) from None
        if not math.isfinite(parsed):
            raise SettingsError(f"{name}={value!r} is not a finite number", fix)
        if parsed < low:
            raise SettingsError(f"{name}={value!r} is less than {low:g}", fix)
        return float(parsed)

    def subject_order(self, trust_request_user: bool) -> tuple[str, ...]:
        value = self._raw("OPENMETER_SUBJECT_FROM")
        if value is None:
            order: tuple[str, ...] = ("user", "key_user_id")
        else:
            items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
            order = tuple(str(item).strip() for item in items if str(item).strip())
            unknown = [item for item in order if item not in SUBJECT_SOURCES]
            if unknown or not order:
                raise SettingsError(
                    f"OPENMETER_SUBJECT_FROM={value!r} is not valid",
                    f"give a comma-separated list of {', '.join(SUBJECT_SOURCES)}",
                )
        if not trust_request_user:
            order = tuple(item for item in order if item != "user")
        return order

    def reject_unknown_overrides(self) -> None:
        unknown = sorted(set(self._overrides) - self._used)
        if unknown:
            known = ", ".join(sorted(f.lower() for f in _KNOWN_KEYS))
            raise SettingsError(f"Unknown setting(s) {', '.join(unknown)}", f"known are {known}")


_ALIASES = {"api_endpoint": ("endpoint",)}

_KNOWN_KEYS = (
    "api_key",
    "endpoint",
    "api_endpoint",
    "event_type",
    "event_shape",
    "source",
    "trust_request_user",
    "subject_from",
    "meter_failures",
    "outbox_path",
    "batch_size",
    "flush_interval",
    "retry_max_delay",
    "outbox_max_bytes",
    "shutdown_timeout",
    "http_timeout",
    "handle_sigterm",
    "unfinished_after",
    "meter_unfinished",
)
