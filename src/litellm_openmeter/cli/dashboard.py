"""``litellm-openmeter dashboard``: the usage dashboard for the configured OpenMeter."""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

from ..settings import Settings
from .common import SERVER_TOKEN_ENV, listen, settings_from_env

DEAD_LETTERS_SHOWN = 20


def delivery_health(settings: Settings) -> dict[str, Any]:
    """What the dashboard shows of the outbox beside it: queued, oldest age, dead letters
    with their reasons, and whether delivery is paused."""
    from ..delivery.outbox import Outbox

    path = settings.outbox_path
    health: dict[str, Any] = {"path": str(path), "exists": path.exists()}
    if not health["exists"]:
        return {**health, "queued": 0, "dead_lettered": 0, "dead_letters": [], "reasons": {}}
    outbox = Outbox(path, settings.outbox_max_bytes, verify=False)
    try:
        stats = outbox.stats()
        newest = outbox.dead_letters(DEAD_LETTERS_SHOWN, newest_first=True)
        reasons = outbox.dead_letter_reasons()
    finally:
        outbox.close()
    return {
        **health,
        "queued": stats.queued,
        "in_flight": stats.in_flight,
        "oldest_age_seconds": stats.oldest_age_seconds,
        "delivered": stats.delivered,
        "dead_lettered": stats.dead_lettered,
        "paused": stats.paused,
        "last_error": stats.last_error,
        "reasons": reasons,
        "dead_letters": [
            {
                "id": letter.id,
                "reason": letter.reason,
                "detail": letter.detail,
                "subject": letter.event.get("subject") or "",
                "failedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.failed_at)),
            }
            for letter in newest
        ],
    }


def dashboard_command(args: argparse.Namespace) -> int:
    """Serve the dashboard in the foreground until Ctrl-C."""
    from ..server import create_forwarding_app, serve_app

    settings = settings_from_env()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    token = args.token or os.environ.get(SERVER_TOKEN_ENV) or None
    sock = listen(args.host, args.port)
    app = create_forwarding_app(
        settings.endpoint,
        settings.api_key,
        token=token,
        timeout=max(settings.http_timeout, 30.0),
        delivery=lambda: delivery_health(settings),
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = sock.getsockname()[1]
    logging.getLogger("litellm_openmeter.server").info(
        "dashboard for %s at http://%s:%d/ (%s)",
        settings.endpoint,
        host,
        port,
        "a bearer token" if token else "no auth",
    )
    serve_app(sock, app)
    return 0
