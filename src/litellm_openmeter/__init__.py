"""litellm-openmeter: bill LiteLLM usage through OpenMeter, durably.

``OpenMeterLogger`` is a LiteLLM ``CustomLogger``; register it with
``litellm.callbacks = [OpenMeterLogger()]``. For the LiteLLM proxy, config.yaml
names the ready instance ``litellm_openmeter.proxy_handler_instance``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from .logger import OpenMeterLogger

__all__ = ["OpenMeterLogger", "Settings", "SettingsError", "__version__", "proxy_handler_instance"]

_proxy_lock = threading.Lock()
_proxy_instance: OpenMeterLogger | None = None


def __getattr__(name: str) -> Any:
    # Lazy: importing the package must not need LiteLLM loaded or OPENMETER_API_KEY set.
    global _proxy_instance
    if name == "OpenMeterLogger":
        from .logger import OpenMeterLogger

        return OpenMeterLogger
    if name == "proxy_handler_instance":
        with _proxy_lock:
            if _proxy_instance is None:
                from .logger import OpenMeterLogger

                _proxy_instance = OpenMeterLogger()
            return _proxy_instance
    raise AttributeError(f"module 'litellm_openmeter' has no attribute {name!r}")
