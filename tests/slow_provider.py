"""A slow streaming provider for LiteLLM, registered the way LiteLLM supports custom
providers (``litellm.custom_provider_map``, or ``custom_provider_map`` in the proxy's
config): ``slow/usage`` streams ``CHUNKS`` one-token chunks ``DELAY`` seconds apart and
reports its usage in the last one, as OpenAI does; ``slow/silent`` reports none."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk

CHUNKS = 20
DELAY = 0.05
PROMPT_TOKENS = 17
"""What the provider counts for any prompt: never what LiteLLM's tokenizer counts."""


def _chunks(model: str) -> Iterator[GenericStreamingChunk]:
    reports = model.endswith("usage")
    for index in range(CHUNKS):
        last = index == CHUNKS - 1
        usage = None
        if last and reports:
            usage = {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": CHUNKS,
                "total_tokens": PROMPT_TOKENS + CHUNKS,
            }
        yield {
            "text": f"w{index} ",
            "is_finished": last,
            "finish_reason": "stop" if last else "",
            "usage": usage,  # type: ignore[typeddict-item]
            "index": 0,
        }


def _before_the_request(kwargs: dict[str, Any]) -> None:
    """LiteLLM's pre-call log, which its own providers make before they send a request
    (a custom provider makes it itself); loggers' ``log_pre_api_call`` runs in it."""
    logging_obj = kwargs.get("logging_obj")
    if logging_obj is not None:
        logging_obj.pre_call(input=kwargs.get("messages"), api_key="", additional_args={})


class SlowProvider(CustomLLM):
    def streaming(self, *args: Any, **kwargs: Any) -> Iterator[GenericStreamingChunk]:
        _before_the_request(kwargs)
        for chunk in _chunks(str(kwargs.get("model"))):
            time.sleep(DELAY)
            yield chunk

    async def astreaming(  # type: ignore[override]
        self, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        _before_the_request(kwargs)
        for chunk in _chunks(str(kwargs.get("model"))):
            await asyncio.sleep(DELAY)
            yield chunk


slow_provider = SlowProvider()
