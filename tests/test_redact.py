"""Errors described without the bytes that caused them, and library log records made safe."""

from __future__ import annotations

import logging
import sys

import aiohttp
import pytest
from aiohttp import http_exceptions

from proxy.logs import library_event
from proxy.redact import client_address, describe_chain, describe_error, frames, http_error_reason

SECRET = "TOKEN-5e1f"


def record(
    msg: str, *args: object, exc: BaseException | None = None, name: str = "aiohttp.server"
) -> logging.LogRecord:
    """A log record as a library would make it, with ``exc`` as its exc_info."""
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, exc_info)


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as it would be when logged."""
    try:
        raise exc
    except BaseException as caught:
        return caught


class TestHttpErrorReason:
    @pytest.mark.parametrize(
        ("exc", "reason"),
        [
            (
                http_exceptions.BadHttpMessage(
                    f"Invalid header value char:\n\n  b'Authorization: Bearer {SECRET}\\x01'\n   ^"
                ),
                "Invalid header value char",
            ),
            (
                http_exceptions.BadStatusLine(
                    error=f"Bad status line:\n  Invalid minor version:\n\n  b'GET /?k={SECRET}'"
                ),
                "Bad status line: Invalid minor version",
            ),
            (http_exceptions.InvalidHeader(f"X-Key: {SECRET}"), "Invalid HTTP header"),
            (http_exceptions.BadStatusLine(f"GET /?k={SECRET} HTTP/9"), "a malformed request line"),
            (http_exceptions.LineTooLong(SECRET * 10, 8190), "Got more than 8190 bytes when reading"),
            (
                http_exceptions.BadHttpMessage(
                    "Transfer-Encoding can't be present with Content-Length:\n\n  b'x'"
                ),
                "Transfer-Encoding cannot be present with Content-Length",
            ),
            (
                http_exceptions.BadHttpMessage(f"Duplicate '{SECRET}' header found."),
                "a malformed HTTP message",
            ),
        ],
    )
    def test_keeps_the_fixed_words_only(self, exc: http_exceptions.HttpProcessingError, reason: str) -> None:
        """The parser's fixed reason is kept, up to the first sign of the raw bytes it quotes."""
        assert http_error_reason(exc) == reason


class TestDescribeError:
    def test_os_errors_say_their_errno(self) -> None:
        """An OSError is described by its errno's own words, not by its message."""
        assert (
            describe_error(ConnectionRefusedError(111, f"refused {SECRET}"))
            == "ConnectionRefusedError: Connection refused"
        )

    def test_other_errors_are_their_class(self) -> None:
        """A message could quote anything, so only the class is kept."""
        assert describe_error(KeyError(SECRET)) == "KeyError"
        assert (
            describe_error(
                aiohttp.ClientOSError(None, f"Can not write request body for http://x/?k={SECRET}")
            )
            == "ClientOSError"
        )

    def test_the_cause_adds_what_it_knows(self) -> None:
        """A wrapper's cause is named when it says more than the wrapper."""
        try:
            try:
                raise http_exceptions.TransferEncodingError(
                    f"Invalid character in chunk size:\n\n b'{SECRET}'"
                )
            except http_exceptions.HttpProcessingError as inner:
                raise aiohttp.ClientPayloadError(f"Response payload is not completed: {inner!r}") from inner
        except aiohttp.ClientPayloadError as outer:
            described = describe_chain(outer)
        assert described == "ClientPayloadError (TransferEncodingError: Invalid character in chunk size)"

    def test_frames_name_places_not_values(self) -> None:
        """Frames are file:line in function, nothing from the exception's message."""
        [frame] = frames(raised(ValueError(SECRET)))
        assert frame.startswith("test_redact.py:") and frame.endswith(" in raised")

    @pytest.mark.parametrize(
        ("value", "address"), [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), (SECRET, None), (1, None)]
    )
    def test_client_address(self, value: object, address: str | None) -> None:
        """Only a value that is an IP address passes as a client address."""
        assert client_address(value) == address


class TestLibraryEvent:
    def test_a_parser_error_is_bad_request(self) -> None:
        """aiohttp's 'Error handling request' for a malformed request keeps the reason and client."""
        exc = raised(http_exceptions.BadHttpMessage(f"Invalid header value char:\n\n  b'Bearer {SECRET}'"))
        event, fields = library_event(record("Error handling request from %s", "192.0.2.7", exc=exc))
        assert (event, fields) == (
            "bad_request",
            {
                "logger": "aiohttp.server",
                "message": "Error handling request from",
                "client": "192.0.2.7",
                "error": "BadHttpMessage: Invalid header value char",
                "status": 400,
            },
        )

    def test_an_asyncio_callback_report_loses_its_arguments(self) -> None:
        """asyncio's report quotes the callback and its arguments: only the fixed words stay."""
        message = f"Exception in callback Protocol.data_received(b'{SECRET}')\nhandle: <Handle ...>"
        event, fields = library_event(record(message, exc=raised(RuntimeError(SECRET)), name="asyncio"))
        assert event == "library_log"
        assert fields["message"] == "Exception in callback Protocol.data_received"
        assert fields["error"] == "RuntimeError"
        assert SECRET not in repr(fields)

    def test_arguments_that_are_not_addresses_are_dropped(self) -> None:
        """A %-argument is never rendered; an IP address is kept as the client."""
        event, fields = library_event(
            record("Could not parse %s for %s", SECRET, "10.0.0.1", name="aiohttp.client")
        )
        assert (event, fields) == (
            "library_log",
            {"logger": "aiohttp.client", "message": "Could not parse", "client": "10.0.0.1"},
        )

    def test_reaches_the_configured_stream(self, capsys: pytest.CaptureFixture[str]) -> None:
        """configure_logging routes stdlib records through the same JSON stream, safely."""
        from proxy.logs import configure_logging

        configure_logging("json", "info", sys.stdout, cache=False)
        try:
            exc = raised(http_exceptions.BadHttpMessage(f"Invalid header value char:\n\n  b'{SECRET}'"))
            logging.getLogger("aiohttp.server").error(
                "Error handling request from %s", "127.0.0.1", exc_info=exc
            )
        finally:
            import structlog

            structlog.reset_defaults()
            for handler in logging.getLogger().handlers[:]:
                if type(handler).__name__ == "LibraryRecords":
                    logging.getLogger().removeHandler(handler)
        out = capsys.readouterr().out
        assert '"event": "bad_request"' in out and SECRET not in out


class FullDisk:
    """A stream whose every write fails the way a full disk or a closed pipe does."""

    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return False


class TestDroppingStream:
    def test_a_failing_stream_drops_lines_and_counts_them(self) -> None:
        """Writes that fail are counted and dropped; nothing is raised to the caller."""
        from proxy.logs import DroppingStream

        stream = DroppingStream(FullDisk())  # type: ignore[arg-type]
        assert stream.write("line\n") == 0
        stream.flush()
        assert stream.dropped == 1

    def test_logging_to_a_full_disk_never_raises(self) -> None:
        """With the log stream failing, structlog and library records still return normally."""
        import structlog

        from proxy.logs import configure_logging

        configure_logging("json", "info", FullDisk(), cache=False)  # type: ignore[arg-type]
        try:
            structlog.get_logger("test").info("result", model="m")
            logging.getLogger("aiohttp.server").error("Error handling request from %s", "127.0.0.1")
        finally:
            structlog.reset_defaults()
            for handler in logging.getLogger().handlers[:]:
                if type(handler).__name__ == "LibraryRecords":
                    logging.getLogger().removeHandler(handler)
