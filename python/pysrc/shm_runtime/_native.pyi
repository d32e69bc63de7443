"""Type stubs of the compiled core (re-exported by ``shm_runtime``)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Literal

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

PROTOCOL_VERSION: int

Texts = str | Sequence[str]
Messages = Sequence[Mapping[str, str] | tuple[str, str]]
FinishReason = Literal["stop", "length", "cancelled", "timeout"]

class Embeddings(Buffer):
    """Embeddings of a batch of texts: a read-only float32 ``(n, dim)`` buffer in shared memory.

    ``numpy.asarray(e)`` is a zero-copy view that keeps the answer alive; ``copy()`` makes an
    array of your own; ``release()`` returns the shared memory early.
    """

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    @property
    def dim(self) -> int: ...
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def released(self) -> bool: ...
    @property
    def exports(self) -> int:
        """Buffer views of this answer that are alive (numpy arrays, memoryviews)."""
    def row(self, i: int) -> list[float]: ...
    def tolist(self) -> list[list[float]]: ...
    def copy(self) -> "numpy.ndarray":  # type: ignore[name-defined]  # noqa: F821
        """A numpy array of your own with the same values (needs numpy)."""
    def release(self) -> None:
        """Returns the shared memory now. Raises ``BufferError`` while views of it exist."""

class Classification:
    @property
    def label(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def scores(self) -> dict[str, float]:
        """Every label's score, best first."""

class Usage:
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...

class Generation:
    @property
    def text(self) -> str: ...
    @property
    def tokens(self) -> list[int]: ...
    @property
    def finish_reason(self) -> FinishReason: ...
    @property
    def usage(self) -> Usage: ...
    @property
    def time_to_first_token(self) -> float:
        """Seconds from the request's arrival at the server to its first token."""
    @property
    def total_time(self) -> float:
        """Seconds the server spent on the request."""

class ModelHealth:
    @property
    def name(self) -> str: ...
    @property
    def state(self) -> Literal["warming", "ready", "failed"]: ...
    @property
    def ping(self) -> float: ...

class Health:
    @property
    def server_pid(self) -> int: ...
    @property
    def uptime(self) -> float: ...
    @property
    def version(self) -> str: ...
    @property
    def models(self) -> list[ModelHealth]: ...
    @property
    def ready(self) -> bool:
        """Whether every model is ready."""

class TextStream(Iterator[str]):
    """A streamed generation: text pieces; ``generation`` once it ended. Closing cancels."""

    def __iter__(self) -> TextStream: ...
    def __next__(self) -> str: ...
    @property
    def generation(self) -> Generation | None: ...
    def close(self) -> None: ...
    def __enter__(self) -> TextStream: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

class AsyncTextStream(AsyncIterator[str]):
    """``TextStream`` for ``async for``. ``aclose()`` cancels the request."""

    def __aiter__(self) -> AsyncTextStream: ...
    def __anext__(self) -> Awaitable[str]: ...
    @property
    def generation(self) -> Generation | None: ...
    def aclose(self) -> Awaitable[None]: ...

class Client:
    """A connection to the shm-runtime service ``service`` on this machine (thread-safe).

    ``timeout`` (seconds) bounds every call that gives none of its own.
    """

    def __init__(self, service: str, timeout: float = 30.0) -> None: ...
    @property
    def service(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def closed(self) -> bool: ...
    def embed(self, texts: Texts, *, model: str) -> Embeddings: ...
    def classify(self, texts: Texts, *, model: str) -> list[Classification]: ...
    def generate(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Generation: ...
    def chat(
        self,
        messages: Messages,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Generation: ...
    def stream(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> TextStream: ...
    def chat_stream(
        self,
        messages: Messages,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> TextStream: ...
    def health(self, timeout: float | None = None) -> Health: ...
    def models(self) -> list[str]: ...
    def pool_free(self) -> tuple[int, int]:
        """``(free, total)`` chunks of the service's shared-memory pool."""
    def close(self) -> None: ...
    def __enter__(self) -> Client: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

class AsyncClient:
    """``Client`` for asyncio: awaitable calls that never block the event loop."""

    def __init__(self, service: str, timeout: float = 30.0) -> None: ...
    @property
    def service(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def closed(self) -> bool: ...
    def embed(self, texts: Texts, *, model: str) -> Awaitable[Embeddings]: ...
    def classify(self, texts: Texts, *, model: str) -> Awaitable[list[Classification]]: ...
    def generate(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Awaitable[Generation]: ...
    def chat(
        self,
        messages: Messages,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Awaitable[Generation]: ...
    def stream(
        self,
        prompt: str,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> AsyncTextStream: ...
    def chat_stream(
        self,
        messages: Messages,
        *,
        model: str,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> AsyncTextStream: ...
    def health(self, timeout: float | None = None) -> Awaitable[Health]: ...
    def models(self) -> list[str]: ...
    def pool_free(self) -> tuple[int, int]: ...
    def close(self) -> None: ...
    def __aenter__(self) -> Awaitable[AsyncClient]: ...
    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]: ...
