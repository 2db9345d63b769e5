"""Go's ``encoding/json`` as the translators need it: writing, reading, and struct decoding errors."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.compat.godecode import BOOL, INT, STRING, GoDecodeError, decode, slice_of, struct
from proxy.compat.gojson import (
    GoJSONError,
    TooDeep,
    Verbatim,
    dumps,
    format_float,
    go_map_deep,
    loads,
    unmarshal,
)
from proxy.compat.openai_common import TranslationError, go_base64_decode


class TestDumps:
    def test_compact_and_in_insertion_order(self) -> None:
        """Output is compact and keeps the key order the dict holds (Go's struct order)."""
        assert dumps({"b": 1, "a": [True, None, "x"]}) == b'{"b":1,"a":[true,null,"x"]}'

    def test_html_characters_and_line_separators_are_escaped(self) -> None:
        """<, >, &, U+2028 and U+2029 are escaped as Go's default encoder does; other text stays UTF-8."""
        assert (
            dumps("<a href='x'>&\u2028\u2029é\n\t\x01")
            == "\"\\u003ca href='x'\\u003e\\u0026\\u2028\\u2029é\\n\\t\\u0001\"".encode()
        )

    @pytest.mark.parametrize(
        ("number", "text"),
        [
            (1.0, "1"),
            (0.5, "0.5"),
            (-0.0, "-0"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (1e-6, "0.000001"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (123456.789, "123456.789"),
            (1e-10, "1e-10"),
        ],
    )
    def test_floats_print_as_go_prints_them(self, number: float, text: str) -> None:
        """Floats use the shortest digits, no .0, and exponent form only below 1e-6 or from 1e21."""
        assert format_float(number) == text

    def test_verbatim_keeps_its_order_inside_sorted_maps(self) -> None:
        """go_map_deep sorts like a Go map but leaves a Verbatim (json.RawMessage) as it was."""
        value = go_map_deep({"z": 1, "a": {"y": 2, "b": 3}, "s": Verbatim({"z": 0, "a": 1})})
        assert dumps(value) == b'{"a":{"b":3,"y":2},"s":{"z":0,"a":1},"z":1}'

    def test_nan_cannot_be_written(self) -> None:
        """NaN is refused, as json.Marshal refuses it."""
        with pytest.raises(ValueError, match="unsupported value"):
            dumps(float("nan"))


class TestLoads:
    @pytest.mark.parametrize(
        ("raw", "message"),
        [
            (b"", "EOF"),
            (b"  \n", "EOF"),
            (b'{"model":', "unexpected EOF"),
            (b'{"model": x}', "invalid character 'x' looking for beginning of value"),
            (b'{"model" 1}', "invalid character '1' after object key"),
            (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
            (b"[1 2]", "invalid character '2' after array element"),
            (b'{"a":1,}', "invalid character '}' looking for beginning of object key string"),
            (b'{"n": NaN}', "invalid character 'N' looking for beginning of value"),
        ],
    )
    def test_syntax_errors_carry_go_messages(self, raw: bytes, message: str) -> None:
        """A body gin cannot decode fails with the message Go's decoder gives."""
        with pytest.raises(GoJSONError) as error:
            loads(raw)
        assert str(error.value) == message

    def test_text_after_the_first_value_is_ignored(self) -> None:
        """Like Go's Decoder, only the first value is read."""
        assert loads(b'{"a":1} trailing') == {"a": 1}

    def test_unmarshal_refuses_trailing_text(self) -> None:
        """json.Unmarshal of a whole string refuses anything after the value."""
        with pytest.raises(GoJSONError, match="invalid character 'x' after top-level value"):
            unmarshal('{"a":1} x')
        with pytest.raises(GoJSONError, match="unexpected end of JSON input"):
            unmarshal('{"a":')


class TestLimits:
    """What Go's decoder refuses that Python's would read, and what Python cannot read that Go does."""

    @pytest.mark.parametrize("read", [loads, lambda raw: unmarshal(raw.decode())])
    def test_nesting_past_go_s_limit_is_its_error(self, read: Any) -> None:
        raw = b'{"a":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
        with pytest.raises(GoJSONError, match=r"^invalid character '\[' exceeded max depth$"):
            read(raw)

    def test_nesting_go_reads_but_python_cannot_is_too_deep(self) -> None:
        """Within Go's 10 000 levels, past Python's recursion: Ollama must read it, untranslated."""
        with pytest.raises(TooDeep):
            loads(b'{"a":' + b"[" * 5_000 + b"]" * 5_000 + b"}")

    def test_brackets_inside_strings_do_not_nest(self) -> None:
        raw = b'{"p":"' + b"[" * 20_000 + b'\\\\", "a":' + b"[" * 5_000 + b"]" * 5_000 + b"}"
        with pytest.raises(TooDeep):
            loads(raw)

    def test_a_lone_surrogate_is_go_s_replacement_character(self) -> None:
        """Go decodes ``"\\ud800"`` to U+FFFD (a valid pair stays one character), in keys too."""
        assert loads(b'{"a\\udc00":["x\\ud800y", "\\ud83d\\ude00"]}') == {
            "a\ufffd": ["x\ufffdy", "\U0001f600"]
        }

    @pytest.mark.parametrize("number", ["1e400", "-1e400"])
    def test_a_number_past_float64_fails_the_body(self, number: str) -> None:
        with pytest.raises(
            GoJSONError, match=f"cannot unmarshal number {number} into Go value of type float64"
        ):
            loads(b'{"temperature":%s}' % number.encode())


class TestDecode:
    SHAPE = struct(
        "pkg.Outer", {"n": INT, "flag": BOOL, "items": slice_of(struct("pkg.Item", {"name": STRING}))}
    )

    def test_unknown_keys_vanish_and_null_means_absent(self) -> None:
        """Only known fields survive; null leaves a field unset."""
        assert decode({"n": 1, "extra": 2, "flag": None}, self.SHAPE) == {"n": 1}

    def test_first_type_error_wins(self) -> None:
        """The first mismatch in document order is reported, naming the innermost struct."""
        with pytest.raises(GoDecodeError) as error:
            decode({"items": [{"name": 1}], "n": "x"}, self.SHAPE)
        assert (
            str(error.value)
            == "json: cannot unmarshal number into Go struct field Item.items.name of type string"
        )

    def test_top_level_mismatch_names_the_type(self) -> None:
        """A body that is not an object cannot become the struct."""
        with pytest.raises(GoDecodeError) as error:
            decode([1], self.SHAPE)
        assert str(error.value) == "json: cannot unmarshal array into Go value of type pkg.Outer"


class TestBase64:
    def test_decodes_padded_base64_skipping_newlines(self) -> None:
        """Standard padded base64 decodes; CR and LF are skipped as Go skips them."""
        assert go_base64_decode("aGVs\nbG8=") == b"hello"

    @pytest.mark.parametrize(("text", "position"), [("abc", 0), ("ab!d", 2), ("ab=c", 2), ("abcd=", 4)])
    def test_errors_name_the_byte_go_names(self, text: str, position: int) -> None:
        """Corrupt input reports the offset Go's decoder reports."""
        with pytest.raises(TranslationError, match=f"illegal base64 data at input byte {position}$"):
            go_base64_decode(text)
