"""The exceptions of shm_runtime: one base class, one subclass per reason.

Each also derives from the built-in exception a Python caller would catch for that reason
(``TimeoutError``, ``ConnectionError``, ``ValueError``, ``LookupError``), and carries the message
the runtime gave (``message``; ``str(e)`` says what to do about it).
"""

from __future__ import annotations

__all__ = [
    "ShmRuntimeError",
    "ServiceNotFoundError",
    "ServerGoneError",
    "DisconnectedError",
    "ShuttingDownError",
    "BusyError",
    "ResourceExhaustedError",
    "TimedOutError",
    "CancelledError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "BackendError",
    "ProtocolError",
]


class ShmRuntimeError(Exception):
    """Base class of every error the runtime reports."""

    message: str

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServiceNotFoundError(ShmRuntimeError, ConnectionError):
    """No service of that name runs on this machine (or it runs another protocol version)."""


class ServerGoneError(ShmRuntimeError, ConnectionError):
    """The server died or stopped while the call waited; start it again and reconnect."""


class DisconnectedError(ServerGoneError):
    """The server closed this client's connection (the message says why)."""


class ShuttingDownError(ServerGoneError):
    """The server is shutting down and takes no new requests."""


class BusyError(ShmRuntimeError):
    """A limit on requests in flight was reached; retry after the ones in flight end."""


class ResourceExhaustedError(BusyError):
    """Shared memory for the request or its answer ran out (the pool, or this client's share)."""


class TimedOutError(ShmRuntimeError, TimeoutError):
    """No final answer within the deadline; the request was cancelled."""


class CancelledError(ShmRuntimeError):
    """The request was cancelled before it finished."""


class InvalidRequestError(ShmRuntimeError, ValueError):
    """The runtime refused the request as malformed or too large (the message says which)."""


class ModelNotFoundError(ShmRuntimeError, LookupError):
    """The service serves no model of that name; ``Client.models()`` lists the ones it does."""


class BackendError(ShmRuntimeError):
    """The model's backend failed on this request."""


class ProtocolError(ShmRuntimeError):
    """The server's answer broke the shared-memory protocol."""
