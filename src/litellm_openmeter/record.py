"""Usage extraction: from LiteLLM's callback arguments to one :class:`UsageRecord`.

Pure functions, no I/O. The input is the ``kwargs`` mapping LiteLLM passes to every
``CustomLogger`` hook; its ``standard_logging_object`` (a StandardLoggingPayload)
carries almost everything, the rest (the request ``user``) sits in ``kwargs``.

Token convention (the rule every event follows):

* ``prompt_tokens`` counts *all* input tokens, cached ones included (OpenAI's
  convention). LiteLLM already normalises Anthropic's usage this way; a raw usage
  that reports ``input_tokens`` without ``prompt_tokens`` (Anthropic's own
  convention, cache tokens on top), or whose ``prompt_tokens`` is smaller than its
  cache tokens, gets the cache tokens added.
* ``cache_read_tokens`` and ``cache_creation_tokens`` are parts of ``prompt_tokens``.
* ``reasoning_tokens`` is a part of ``completion_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any, NamedTuple

IDENTITY_NAMES = ("user", "key_user_id", "end_user", "team_id", "key_alias", "org_id")

CLIENT_DISCONNECTED = "client_disconnected"
"""The client left a streamed call early; LiteLLM billed what it had streamed, its
prompt counted by LiteLLM itself (the provider's usage chunk never came)."""
NO_PROVIDER_USAGE = "no_provider_usage"
"""A stream whose provider reported no usage; LiteLLM counted the tokens itself."""
UNFINISHED = "unfinished"
"""A call that started and never reported (see ``OPENMETER_METER_UNFINISHED``)."""

TokenCounter = Callable[[str, object, "str | None"], "int | None"]
"""Counts tokens as LiteLLM does on its own: ``(model, messages, None)`` a prompt's,
``(model, None, text)`` a completion's; None if it cannot."""


@dataclass(slots=True)
class UsageRecord:
    """What one LiteLLM call used, independent of any event format. Read-only by
    convention (not frozen: a frozen dataclass takes several times longer to build,
    and one is built per call)."""

    call_id: str
    end_time: datetime
    model: str
    success: bool = True
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    priced: bool = True
    model_group: str | None = None
    provider: str | None = None
    call_type: str | None = None
    team_id: str | None = None
    key_alias: str | None = None
    end_user: str | None = None
    error_class: str | None = None
    error_code: str | None = None
    cache_hit: bool = False
    estimate_reason: str | None = None
    """Why the usage is an estimate (``CLIENT_DISCONNECTED``, ``NO_PROVIDER_USAGE``,
    ``UNFINISHED``), or None: the provider's own count."""
    identities: Mapping[str, str] = field(default_factory=dict)
    """Candidate subjects by name (see ``IDENTITY_NAMES``), empty values left out."""

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens that were neither read from nor written to a prompt cache."""
        return max(0, self.prompt_tokens - self.cache_read_tokens - self.cache_creation_tokens)

    @property
    def non_reasoning_output_tokens(self) -> int:
        """Output tokens that are not reasoning tokens."""
        return max(0, self.completion_tokens - self.reasoning_tokens)


class UsageError(ValueError):
    """The callback arguments do not describe a call (no call id at all)."""


class _Call(NamedTuple):
    """The top-level values of the hook's ``kwargs`` that a record reads."""

    litellm_call_id: object
    response_cost: object
    user: object
    model: object
    call_type: object
    end_time: object
    """Only when the payload's ``endTime`` is missing or not a time."""
    exception: object
    """The exception's class name."""


class _Payload(NamedTuple):
    """The values of ``kwargs["standard_logging_object"]`` that a record reads."""

    litellm_call_id: object
    id: object
    endTime: object
    response_cost: object
    end_user: object
    model: object
    model_group: object
    custom_llm_provider: object
    call_type: object
    cache_hit: object
    error_information: object
    prompt_tokens: object
    completion_tokens: object
    total_tokens: object
    stream: object


class _Identities(NamedTuple):
    """The proxy's identities in a metadata mapping (LiteLLM's names)."""

    user_api_key_user_id: object
    user_api_key_end_user_id: object
    user_api_key_team_id: object
    user_api_key_alias: object
    user_api_key_org_id: object


CALL_FIELDS = _Call._fields
PAYLOAD_FIELDS = _Payload._fields
IDENTITY_FIELDS = _Identities._fields
_LOOKED_UP = CALL_FIELDS[: CALL_FIELDS.index("end_time")]

CallForm = tuple[
    bool,
    tuple[object, ...],
    bool,
    tuple[object, ...],
    object,
    tuple[object, ...],
    tuple[object, ...],
    object,
    object,
    object,
    "tuple[object, object] | None",
]
"""What a :class:`UsageRecord` is made of, read from a hook's ``kwargs`` by
:func:`call_form`: whether the call succeeded, the values named by ``CALL_FIELDS``,
whether ``kwargs`` has a ``response_cost``, the values named by ``PAYLOAD_FIELDS``,
the usage mapping, the values named by ``IDENTITY_FIELDS`` in the payload's metadata
and in ``litellm_params["metadata"]``, ``litellm_params["custom_llm_provider"]``, the
payload's ``model_parameters["user"]``, the proxy's ``client_disconnected`` flag in
``litellm_params["metadata"]`` and, for a stream only, its messages and the text it
returned (to tell LiteLLM's own count of its tokens from the provider's).

Plain tuples, in that order, because a hook builds it on the caller's thread (on an
async call, its event loop), where only lookups that run in C are cheap;
:func:`record_from_form` puts the names back later, elsewhere. It keeps none of
LiteLLM's containers but the small usage mapping: LiteLLM's objects for the call are
freed with the call (kept until the writer's turn, they would outlive young garbage
collections and pile up for a full one).
"""


def call_form(kwargs: Mapping[str, object], success: bool = True) -> CallForm:
    """Read the values a record needs from the ``kwargs`` of a LiteLLM logging hook."""
    # Each "type(...) is not dict" below spares the common case a Python call to
    # _mapping: a hook runs between LiteLLM's own work, on cold caches, where its cost
    # follows the Python calls it makes (see BENCHMARKS.md, "A hook's cost").
    get = kwargs.get
    slo = get("standard_logging_object")
    if type(slo) is not dict:
        slo = _mapping(slo)
    metadata = slo.get("metadata")
    if type(metadata) is not dict:
        metadata = _mapping(metadata)
    params = get("litellm_params")
    if type(params) is not dict:
        params = _mapping(params)
    params_metadata = params.get("metadata")
    if type(params_metadata) is not dict:
        params_metadata = _mapping(params_metadata)
    model_parameters = slo.get("model_parameters")
    if type(model_parameters) is not dict:
        model_parameters = _mapping(model_parameters)
    end_time = get("end_time")
    if end_time is not None:
        epoch = slo.get("endTime")
        if (type(epoch) is float and 0 < epoch < math.inf) or _epoch(epoch) is not None:
            end_time = None  # only the fallback: not kept when the payload has the time
    exception = get("exception")
    if exception is not None:
        exception = type(exception).__name__
    stream_texts = None
    if slo.get("stream") is True:
        stream_texts = (get("messages"), _response_text(slo.get("response")))
    return (
        success,
        (*map(get, _LOOKED_UP), end_time, exception),
        "response_cost" in kwargs,
        tuple(map(slo.get, PAYLOAD_FIELDS)),
        metadata.get("usage_object"),
        tuple(map(metadata.get, IDENTITY_FIELDS)),
        tuple(map(params_metadata.get, IDENTITY_FIELDS)),
        params.get("custom_llm_provider"),
        model_parameters.get("user"),
        params_metadata.get("client_disconnected"),
        stream_texts,
    )


def _response_text(response: object) -> object:
    """The text of a streamed response's first choice, as the payload holds it."""
    if type(response) is not dict:
        return None
    choices = response.get("choices")
    if type(choices) is not list or not choices or type(choices[0]) is not dict:
        return None
    message = choices[0].get("message")
    return message.get("content") if type(message) is dict else None


def record_from_kwargs(
    kwargs: Mapping[str, object],
    *,
    success: bool = True,
    count_tokens: TokenCounter | None = None,
) -> UsageRecord:
    """Build a :class:`UsageRecord` from the ``kwargs`` of a LiteLLM logging hook."""
    return record_from_form(call_form(kwargs, success), count_tokens)


def record_from_form(form: Sequence[Any], count_tokens: TokenCounter | None = None) -> UsageRecord:
    """Build a :class:`UsageRecord` from a :func:`call_form`. ``count_tokens`` tells a
    stream whose provider reported no usage (see :func:`estimate_reason`)."""
    (
        success,
        call_values,
        has_response_cost,
        payload,
        usage,
        found,
        fallback,
        params_provider,
        parameters_user,
        disconnected,
        stream_texts,
    ) = form
    call, slo = _Call._make(call_values), _Payload._make(payload)
    call_id = _text(call.litellm_call_id) or _text(slo.litellm_call_id) or _text(slo.id)
    if call_id is None:
        raise UsageError("LiteLLM passed no litellm_call_id for this call")

    tokens = _tokens(_mapping(usage), slo)
    end_time = _time(slo.endTime, call.end_time)

    # kwargs["response_cost"] is None when LiteLLM could not price the call; the
    # standard logging object then says 0.0, so it is only the fallback.
    if has_response_cost:
        cost = _number(call.response_cost)
        priced = cost is not None
    else:
        cost = _number(slo.response_cost)
        used = tokens["prompt_tokens"] + tokens["completion_tokens"]
        priced = cost is not None and (cost > 0 or used == 0)
    priced = priced or not success
    if cost is None:
        cost = 0.0

    def meta(position: int) -> str | None:
        value = found[position]
        text = None if value is None else _text(value)
        if text is None:
            value = fallback[position]
            text = None if value is None else _text(value)
        return text

    end_user = _text(slo.end_user) or meta(1)
    team_id = meta(2)
    key_alias = meta(3)
    identities = {
        "user": _text(call.user) or _text(parameters_user),
        "key_user_id": meta(0),
        "end_user": end_user,
        "team_id": team_id,
        "key_alias": key_alias,
        "org_id": meta(4),
    }
    error_class = error_code = None
    error_info = _mapping(slo.error_information)
    model = _text(slo.model) or _text(call.model) or "unknown"
    reason = None
    if success:
        reason = estimate_reason(
            disconnected, error_info, usage, tokens, model, stream_texts, count_tokens
        )
    else:
        error_class = _text(error_info.get("error_class"))
        error_code = _text(error_info.get("error_code"))
        if error_class is None:
            error_class = _text(call.exception) or "UnknownError"
    return UsageRecord(
        call_id=call_id,
        end_time=end_time,
        model=model,
        success=success,
        cost=cost,
        priced=priced,
        model_group=_text(slo.model_group),
        provider=_text(slo.custom_llm_provider) or _text(params_provider),
        call_type=_text(slo.call_type) or _text(call.call_type),
        team_id=team_id,
        key_alias=key_alias,
        end_user=end_user,
        error_class=error_class,
        error_code=error_code,
        cache_hit=slo.cache_hit is True,
        estimate_reason=reason,
        identities={k: v for k, v in identities.items() if v is not None},
        **tokens,
    )


def estimate_reason(
    disconnected: object,
    error_information: Mapping[str, object],
    usage: object,
    tokens: Mapping[str, int],
    model: str,
    stream_texts: tuple[object, object] | None,
    count_tokens: TokenCounter | None,
) -> str | None:
    """Why a successful call's usage is LiteLLM's estimate, or None (the provider's).

    * ``CLIENT_DISCONNECTED``: LiteLLM's proxy flags a stream whose client left
      (``litellm_params.metadata.client_disconnected``, and error code 499 in the
      payload's ``error_information``) and bills what was streamed; the usage chunk
      comes last, so the prompt is LiteLLM's count.
    * ``NO_PROVIDER_USAGE``: a stream whose usage is exactly what LiteLLM counts itself
      from the messages and the text (``count_tokens``) and carries no
      ``prompt_tokens_details``, which providers that report usage send (OpenAI, and
      LiteLLM's mapping of Anthropic's cache fields); LiteLLM leaves no other trace of
      having counted.
    """
    if disconnected is True or error_information.get("error_code") == "499":
        return CLIENT_DISCONNECTED
    if stream_texts is None or count_tokens is None:
        return None
    reported = _mapping(usage)
    details = _mapping(reported.get("prompt_tokens_details")).values()
    if any(value is not None for value in details):
        return None
    messages, text = stream_texts
    # The completion first: usually the shorter text, and usually what tells them apart.
    completion = count_tokens(model, None, text if isinstance(text, str) else "")
    if completion is None or tokens["completion_tokens"] != completion + tokens["reasoning_tokens"]:
        return None
    if tokens["prompt_tokens"] != count_tokens(model, messages, None):
        return None
    return NO_PROVIDER_USAGE


def _tokens(usage: Mapping[str, object], slo: _Payload) -> dict[str, int]:
    prompt_details = _mapping(usage.get("prompt_tokens_details"))
    completion_details = _mapping(usage.get("completion_tokens_details"))
    cache_read = _count(usage.get("cache_read_input_tokens")) or _count(
        prompt_details.get("cached_tokens")
    )
    cache_creation = _count(usage.get("cache_creation_input_tokens")) or _count(
        prompt_details.get("cache_creation_tokens")
    )
    reasoning = _count(completion_details.get("reasoning_tokens")) or _count(
        usage.get("reasoning_tokens")
    )
    if "prompt_tokens" in usage:
        prompt = _count(usage.get("prompt_tokens"))
    elif "input_tokens" in usage:
        # Anthropic's own convention: input_tokens excludes the cache tokens.
        prompt = _count(usage.get("input_tokens")) + cache_read + cache_creation
    else:
        prompt = _count(slo.prompt_tokens)
    if prompt < cache_read + cache_creation:
        prompt += cache_read + cache_creation
    if "completion_tokens" in usage:
        completion = _count(usage.get("completion_tokens"))
    elif "output_tokens" in usage:
        completion = _count(usage.get("output_tokens"))
    else:
        completion = _count(slo.completion_tokens)
    completion = max(completion, reasoning)
    total = _count(usage.get("total_tokens")) or _count(slo.total_tokens)
    total = max(total, prompt + completion)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "cache_read_tokens": cache_read,
        "cache_creation_tokens": cache_creation,
        "reasoning_tokens": reasoning,
    }


# The helpers below run about 40 times per call in the writer thread: each tests the
# common exact type first (an isinstance against an ABC is several times slower).


_NO_MAPPING: Mapping[str, object] = MappingProxyType({})


def _mapping(value: object) -> Mapping[str, object]:
    if type(value) is dict:
        return value
    if value is None:
        return _NO_MAPPING
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    return {}


def _text(value: object) -> str | None:
    """A non-empty string, or None. Numbers become their string (user ids); NaN and
    infinities name nothing."""
    if type(value) is str:
        return value if value and not value.isspace() else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(value) if -math.inf < value < math.inf else None
    if isinstance(value, str):
        return value if value.strip() else None
    return None


def _number(value: object) -> float | None:
    if type(value) is int or type(value) is float:
        return float(value) if 0 <= value < math.inf else None
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


MAX_COUNT = 2**53 - 1
"""The largest count JSON carries exactly everywhere; a token count above it is no count
(the call is kept as a dead letter rather than billed wrong)."""


def _count(value: object) -> int:
    if type(value) is int:
        count = value if value >= 0 else 0
    elif value is None:
        return 0
    else:
        number = _number(value)
        count = int(number) if number is not None else 0
    if count > MAX_COUNT:
        raise UsageError(f"LiteLLM reported a token count of {value!r}, which is not a count")
    return count


def _epoch(value: object) -> float | None:
    """A time in seconds since 1970, or None."""
    number = _number(value)
    return number if number is not None and number > 0 else None


def _time(epoch: object, fallback: object) -> datetime:
    number = _epoch(epoch)
    if number is not None:
        return datetime.fromtimestamp(number, tz=timezone.utc)
    if isinstance(fallback, datetime):
        # LiteLLM's start/end times are naive local times; astimezone reads them so.
        return fallback.astimezone(timezone.utc)
    return datetime.now(tz=timezone.utc)
