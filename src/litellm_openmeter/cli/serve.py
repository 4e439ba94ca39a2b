"""``litellm-openmeter serve``: the OpenMeter-compatible local server."""

from __future__ import annotations

import argparse
import logging
import os

from .common import SERVER_TOKEN_ENV, CommandError, default_server_db, listen


def serve_command(args: argparse.Namespace) -> int:
    """Serve OpenMeter's API on ``--host``:``--port`` from ``--db``."""
    from ..meters import MeterError, load_meters_file
    from ..server import open_store, serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    meters = None
    if args.meters is not None:
        try:
            meters = load_meters_file(args.meters)
        except MeterError as exc:
            raise CommandError(str(exc)) from None
    db = args.db or default_server_db()
    token = args.token or os.environ.get(SERVER_TOKEN_ENV) or None
    sock = listen(args.host, args.port)  # first: a port in use changes nothing
    try:
        store = open_store(db, meters)
    except Exception as exc:
        sock.close()
        raise CommandError(f"cannot open the database {db}: {exc}") from None
    auth = "a bearer token" if token else "no auth"
    logging.getLogger("litellm_openmeter.server").info(
        "serving OpenMeter API on http://%s:%d (db %s, %d meters, %s)",
        args.host,
        args.port,
        db,
        len(store.meters),
        auth,
    )
    serve(sock, store, token=token, max_body=args.max_body)
    return 0
