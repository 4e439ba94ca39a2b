"""A process that lives a few calls long, as a script, a batch job or a CI step does.

usage: short_lived.py OUTBOX ENDPOINT MODE CALLS
  sync:    CALLS ``litellm.completion`` calls, then ``logger.close()``, then exit
  stream:  CALLS streamed ``litellm.completion`` calls read to the end, then ``close()``
  async:   CALLS ``litellm.acompletion`` calls, then ``await logger.aclose()``
  exit:    CALLS ``litellm.completion`` calls, then exit (the exit handler closes)
  kill:    CALLS ``litellm.completion`` calls; once every success hook returned,
           SIGKILL itself 250 ms later (prints HOOKED first)
  load:    CALLS threads calling ``litellm.completion`` until the process ends (by a
           signal), printing ANSWERED and the subject after each call returned
Prints CLOSED and what close returned, where it closes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm

from litellm_openmeter import OpenMeterLogger

MESSAGES = [{"role": "user", "content": "hi"}]


def main() -> None:
    outbox, endpoint, mode, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    logger = OpenMeterLogger(
        api_key="test-key", endpoint=endpoint, outbox_path=outbox, shutdown_timeout=30
    )
    litellm.callbacks = [logger]
    if mode == "async":
        asyncio.run(run_async(logger, calls))
        return
    if mode == "load":
        for thread in range(calls):
            threading.Thread(target=keep_calling, args=(thread,), daemon=True).start()
        threading.Event().wait()
    for index in range(calls):
        answer = litellm.completion(
            model="gpt-4o",
            messages=MESSAGES,
            mock_response="ok",
            user=f"{mode}-{index}",
            stream=mode == "stream",
        )
        if mode == "stream":
            for _ in answer:
                pass
    if mode == "kill":
        deadline = time.monotonic() + 60
        while logger.stats()["calls_seen"] < calls and time.monotonic() < deadline:
            time.sleep(0.001)
        print("HOOKED", logger.stats()["calls_seen"], flush=True)
        time.sleep(0.25)  # the window this mode exists to measure
        os.kill(os.getpid(), signal.SIGKILL)
    if mode in ("sync", "stream"):
        print("CLOSED", logger.close(), flush=True)


def keep_calling(thread: int) -> None:
    index = 0
    while True:
        subject = f"load-{thread}-{index}"
        litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="ok", user=subject)
        sys.stdout.write(f"ANSWERED {subject}\n")  # one write: threads print at once
        sys.stdout.flush()
        index += 1


async def run_async(logger: OpenMeterLogger, calls: int) -> None:
    for index in range(calls):
        await litellm.acompletion(
            model="gpt-4o", messages=MESSAGES, mock_response="ok", user=f"async-{index}"
        )
    print("CLOSED", await logger.aclose(), flush=True)


if __name__ == "__main__":
    main()
