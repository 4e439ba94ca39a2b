"""Delivery: from a hook's hand-over to OpenMeter, durably.

The writer thread builds a call's events and stores them in the outbox (a SQLite file);
the sender thread claims batches from it and posts them through the transport, retrying
and keeping what cannot be delivered as dead letters. Queueing (writer, outbox, sender)
is kept apart from transport (one HTTP POST and what its answer means). See
``docs/architecture.md``.
"""
