"""Bad arguments raise TypeError or ValueError saying what is wrong; the runtime's refusals raise
the package's exceptions with the server's message."""

from __future__ import annotations

import pytest

import shm_runtime
from shm_runtime import errors


def test_every_exception_derives_from_the_base_and_the_builtin_a_caller_expects():
    assert issubclass(errors.TimedOutError, TimeoutError)
    assert issubclass(errors.ServerGoneError, ConnectionError)
    assert issubclass(errors.ServiceNotFoundError, ConnectionError)
    assert issubclass(errors.InvalidRequestError, ValueError)
    assert issubclass(errors.ModelNotFoundError, LookupError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.ShmRuntimeError)


def test_a_service_that_does_not_run():
    with pytest.raises(shm_runtime.ServiceNotFoundError, match="no-such-service") as e:
        shm_runtime.Client("pytest-no-such-service")
    assert "shm-runtime serve" in e.value.message


def test_an_unknown_model_names_itself(client):
    with pytest.raises(shm_runtime.ModelNotFoundError, match="nope"):
        client.generate("hi", model="nope")
    with pytest.raises(shm_runtime.ModelNotFoundError):
        client.embed("hi", model="nope")


@pytest.mark.parametrize(
    ("call", "exc", "message"),
    [
        (lambda c: c.embed([1], model="echo"), TypeError, r"texts\[0\] must be a str, not int"),
        (lambda c: c.embed(b"bytes", model="echo"), TypeError, "not bytes"),
        (lambda c: c.embed(42, model="echo"), TypeError, "not int"),
        (lambda c: c.embed([], model="echo"), ValueError, "texts is empty"),
        (lambda c: c.embed("x"), TypeError, "model"),
        (lambda c: c.generate("x", model="echo", max_tokens=0), ValueError, "max_tokens must be at least 1, not 0"),
        (lambda c: c.generate("x", model="echo", max_tokens=-5), ValueError, "not -5"),
        (lambda c: c.generate("x", model="echo", temperature=-1.0), ValueError, "temperature"),
        (lambda c: c.generate("x", model="echo", temperature=float("nan")), ValueError, "temperature"),
        (lambda c: c.generate("x", model="echo", top_p=1.5), ValueError, "top_p"),
        (lambda c: c.generate("x", model="echo", timeout=0), ValueError, "timeout"),
        (lambda c: c.generate("x", model="echo", stop=[1]), TypeError, r"stop\[0\] must be a str"),
        (lambda c: c.generate(1, model="echo"), TypeError, "prompt"),
        (lambda c: c.chat("hello", model="echo"), TypeError, "not a str"),
        (lambda c: c.chat([{"role": "user"}], model="echo"), ValueError, r'messages\[0\] has no "content"'),
        (lambda c: c.chat([{"role": "user", "content": 3}], model="echo"), TypeError, "must be a str, not int"),
        (lambda c: c.chat([3], model="echo"), TypeError, r"messages\[0\] must be"),
        (lambda c: c.chat([], model="echo"), ValueError, "messages is empty"),
    ],
)
def test_bad_arguments(client, call, exc, message):
    with pytest.raises(exc, match=message):
        call(client)


def test_a_bad_client_timeout():
    with pytest.raises(ValueError, match="timeout"):
        shm_runtime.Client("whatever", timeout=-1)


def test_a_closed_client_says_so(echo_service):
    c = shm_runtime.Client(echo_service.name)
    c.close()
    assert c.closed
    with pytest.raises(ValueError, match="closed"):
        c.generate("x", model="echo")


def test_a_deadline_raises_timed_out_and_cancels(client, echo_service):
    with pytest.raises(shm_runtime.TimedOutError):
        client.generate("x", model="slow", max_tokens=1000, timeout=0.1)
    # The client went on: its next call works.
    assert client.generate("fine", model="echo").text == "fine"
