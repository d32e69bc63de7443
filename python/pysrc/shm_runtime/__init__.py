"""Zero-copy answers from a shm-runtime service on this machine, in microseconds.

    import numpy as np
    import shm_runtime

    with shm_runtime.Client("demo") as client:
        e = client.embed(["a cat", "a dog"], model="minilm")
        vectors = np.asarray(e)            # float32 (2, 384), a view of shared memory
        g = client.generate("Once upon a time", model="smollm2", max_tokens=16)
        for piece in client.stream("Hello", model="smollm2"):
            print(piece, end="")

Every wait releases the GIL; ``AsyncClient`` offers the same calls to asyncio. Errors are
subclasses of ``ShmRuntimeError`` (see ``shm_runtime.errors``).
"""

from __future__ import annotations

from . import errors
from ._native import (
    PROTOCOL_VERSION,
    AsyncClient,
    AsyncTextStream,
    Classification,
    Client,
    Embeddings,
    Generation,
    Health,
    ModelHealth,
    TextStream,
    Usage,
)
from .errors import (
    BackendError,
    BusyError,
    CancelledError,
    DisconnectedError,
    InvalidRequestError,
    ModelNotFoundError,
    ProtocolError,
    ResourceExhaustedError,
    ServerGoneError,
    ServiceNotFoundError,
    ShmRuntimeError,
    ShuttingDownError,
    TimedOutError,
)

__all__ = [
    "PROTOCOL_VERSION",
    "AsyncClient",
    "AsyncTextStream",
    "BackendError",
    "BusyError",
    "CancelledError",
    "Classification",
    "Client",
    "DisconnectedError",
    "Embeddings",
    "Generation",
    "Health",
    "InvalidRequestError",
    "ModelHealth",
    "ModelNotFoundError",
    "ProtocolError",
    "ResourceExhaustedError",
    "ServerGoneError",
    "ServiceNotFoundError",
    "ShmRuntimeError",
    "ShuttingDownError",
    "TextStream",
    "TimedOutError",
    "Usage",
    "errors",
]
