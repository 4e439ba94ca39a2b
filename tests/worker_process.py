"""A process that makes real LiteLLM mock calls through OpenMeterLogger (for crash tests).

usage: worker_process.py OUTBOX ENDPOINT CALLS PREFIX {hang|flush|deliver}
  hang:    after the hooks stored every event, print STORED and wait to be killed
  flush:   store, then flush and exit (prints FLUSHED True|False)
  deliver: make no calls; deliver what the outbox holds, print DELIVERED and exit
"""

from __future__ import annotations

import os
import sys
import time

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import litellm

from litellm_openmeter import OpenMeterLogger


def main() -> None:
    outbox, endpoint, calls, prefix, mode = sys.argv[1:6]
    logger = OpenMeterLogger(
        api_key="test-key",
        endpoint=endpoint,
        outbox_path=outbox,
        flush_interval=0.05,
        retry_max_delay=0.2,
        http_timeout=2.0,
        batch_size=20,
    )
    if mode == "deliver":
        print("DELIVERED", logger.flush(60), flush=True)
        return
    litellm.callbacks = [logger]
    for index in range(int(calls)):
        litellm.completion(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            mock_response="ok",
            user=f"{prefix}-{index % 5}",
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if logger.stats()["enqueued"] >= int(calls):
            break
        time.sleep(0.01)
    print("STORED", flush=True)
    if mode == "hang":
        while True:
            time.sleep(3600)
    print("FLUSHED", logger.flush(60), flush=True)


if __name__ == "__main__":
    main()
