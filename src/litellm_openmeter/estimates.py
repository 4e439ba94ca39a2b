"""Usage LiteLLM did not get from the provider: counted the way LiteLLM counts it.

LiteLLM counts a call's tokens itself (with its ``token_counter``) when a provider
reports no usage; :func:`count_like_litellm` repeats that count, so that such a usage
can be told from the provider's (see ``record.estimate_reason``). A call that started
and never reported (a stream its caller stopped reading) has no usage at all:
:func:`unfinished_record` makes the estimate of its prompt that
``OPENMETER_METER_UNFINISHED`` bills. No I/O; LiteLLM is imported when first needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

from .record import UNFINISHED, UsageRecord, record_from_kwargs


def count_like_litellm(model: str, messages: object, text: str | None) -> int | None:
    """Tokens as LiteLLM counts them when a provider reports none (its stream chunk
    builder's ``calculate_usage``): the prompt's with ``messages``, else ``text``'s as
    a completion; None if LiteLLM cannot count them."""
    try:
        from litellm import token_counter

        if messages is not None:
            return int(token_counter(model=model, messages=messages))  # type: ignore[arg-type]
        return int(token_counter(model=model, text=text or "", count_response_tokens=True))
    except Exception:
        return None


def unfinished_record(details: Mapping[str, object]) -> UsageRecord:
    """The estimate of a call that started and never reported, from LiteLLM's details
    of it as its pre-call hook saw them (``kwargs``): the prompt's tokens as LiteLLM
    counts them and their price, no output (nothing says how much was generated), at
    the time the call started."""
    record = record_from_kwargs(details)
    model = record.model
    prompt = count_like_litellm(model, details.get("messages") or [], None) or 0
    cost, priced = 0.0, False
    try:
        from litellm import cost_per_token

        prompt_cost, _ = cost_per_token(model=model, prompt_tokens=prompt, completion_tokens=0)
        cost, priced = float(prompt_cost), True
    except Exception:
        pass
    started = details.get("start_time")
    if isinstance(started, datetime):
        # LiteLLM's times are naive local times; astimezone reads them so.
        record.end_time = started.astimezone(timezone.utc)
    record.prompt_tokens = record.total_tokens = prompt
    record.completion_tokens = record.reasoning_tokens = 0
    record.cache_read_tokens = record.cache_creation_tokens = 0
    record.cost, record.priced = cost, priced
    record.estimate_reason = UNFINISHED
    return record
