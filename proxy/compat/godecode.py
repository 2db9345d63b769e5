"""Decode a parsed body into the shape of one of Ollama's Go request structs, with Go's errors.

gin's ``ShouldBindJSON`` unmarshals into a typed struct: unknown keys vanish, keys match
case-insensitively, ``null`` leaves a field at its zero value, and the first field of the wrong
type fails the request with ``json: cannot unmarshal string into Go struct field
ChatCompletionRequest.max_tokens of type int``. The compatibility routes answer 400 with that
text, so the translator reproduces it instead of inventing its own.

A decoded struct is a dict holding only the fields that were present and not null, so a
pointer field's nil-ness is ``name not in result``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["int", "float", "string", "bool", "any", "raw", "slice", "struct", "map", "custom"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class GoDecodeError(ValueError):
    """The body does not fit the struct; ``str(error)`` is the message Go would give."""


class CustomDecodeError(ValueError):
    """Raised by a custom decoder (a Go ``UnmarshalJSON`` method); the text is used verbatim."""


@dataclass(frozen=True)
class GoType:
    """A Go type as far as decoding needs it: its printed name, kind and members."""

    go_name: str
    kind: Kind
    elem: GoType | None = None
    fields: tuple[tuple[str, GoType], ...] = ()
    struct_name: str = ""
    custom: Callable[[Any], Any] | None = None
    _by_name: Mapping[str, GoType] = field(default_factory=dict, compare=False, repr=False)

    def field_type(self, key: str) -> tuple[str, GoType] | None:
        """The field a JSON key lands in: an exact name first, then a case-insensitive one."""
        exact = self._by_name.get(key)
        if exact is not None:
            return key, exact
        folded = key.lower()
        for name, go_type in self.fields:
            if name.lower() == folded:
                return name, go_type
        return None


INT = GoType("int", "int")
FLOAT64 = GoType("float64", "float")
FLOAT32 = GoType("float32", "float")
STRING = GoType("string", "string")
BOOL = GoType("bool", "bool")
ANY = GoType("interface {}", "any")
RAW = GoType("json.RawMessage", "raw")
MAP_ANY = GoType("map[string]interface {}", "map")


def slice_of(elem: GoType) -> GoType:
    """``[]elem``."""
    return GoType(f"[]{elem.go_name}", "slice", elem=elem)


def struct(go_name: str, fields: Mapping[str, GoType]) -> GoType:
    """A named struct such as ``openai.Message``; errors name it by its last part (``Message``)."""
    pairs = tuple(fields.items())
    short = go_name.rsplit(".", 1)[-1] if not go_name.startswith("struct {") else ""
    return GoType(go_name, "struct", fields=pairs, struct_name=short, _by_name=dict(pairs))


def anonymous_struct(fields: Mapping[str, tuple[str, GoType]]) -> GoType:
    """An unnamed ``struct { Name T "json:\\"name\\"" }``: ``fields`` maps json name to (Go name, type)."""
    members = "; ".join(
        f'{go_name} {go_type.go_name} "json:\\"{name}\\""' for name, (go_name, go_type) in fields.items()
    )
    return struct(f"struct {{ {members} }}", {name: go_type for name, (_, go_type) in fields.items()})


def custom(go_name: str, decoder: Callable[[Any], Any]) -> GoType:
    """A type with its own ``UnmarshalJSON``: ``decoder`` gets the raw value, may raise."""
    return GoType(go_name, "custom", custom=decoder)


class _Absent:
    """Marks a field that stays at its Go zero value (null, or a value of the wrong type)."""


ABSENT = _Absent()


def decode(value: Any, go_type: GoType) -> Any:
    """``value`` as ``go_type`` holds it; raises :class:`GoDecodeError` as Go would.

    Go keeps decoding after a type mismatch and reports the first one, so the whole value is
    walked and the earliest error (in document order) wins.
    """
    decoder = _Decoder()
    result = decoder.value(value, go_type, (), "")
    if decoder.first_error is not None:
        raise GoDecodeError(decoder.first_error)
    return {} if result is ABSENT and go_type.kind == "struct" else result


def zero_value(go_type: GoType) -> Any:
    """What Go leaves in a field of ``go_type`` that was never set."""
    zeros: dict[Kind, Any] = {"int": 0, "float": 0.0, "string": "", "bool": False, "struct": {}}
    return zeros.get(go_type.kind)


class _Decoder:
    def __init__(self) -> None:
        self.first_error: str | None = None

    def fail(self, message: str) -> None:
        if self.first_error is None:
            self.first_error = message

    def type_error(self, value: Any, go_type: GoType, path: tuple[str, ...], owner: str) -> None:
        described = _describe(value, go_type)
        where = f"Go struct field {owner}.{'.'.join(path)}" if path else "Go value"
        self.fail(f"json: cannot unmarshal {described} into {where} of type {go_type.go_name}")

    def value(self, value: Any, go_type: GoType, path: tuple[str, ...], owner: str) -> Any:
        kind = go_type.kind
        if kind == "raw":
            return value
        if value is None:
            return ABSENT
        if kind == "any":
            return value
        if kind == "custom":
            assert go_type.custom is not None
            try:
                return go_type.custom(value)
            except CustomDecodeError as error:
                self.fail(str(error))
                return ABSENT
        checks: dict[Kind, Callable[[Any], bool]] = {
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and _INT64_MIN <= v <= _INT64_MAX,
            "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "string": lambda v: isinstance(v, str),
            "bool": lambda v: isinstance(v, bool),
            "map": lambda v: isinstance(v, dict),
        }
        if kind in checks:
            if not checks[kind](value):
                self.type_error(value, go_type, path, owner)
                return ABSENT
            return float(value) if kind == "float" else value
        if kind == "slice":
            return self.slice(value, go_type, path, owner)
        return self.struct(value, go_type, path, owner)

    def slice(self, value: Any, go_type: GoType, path: tuple[str, ...], owner: str) -> Any:
        if not isinstance(value, list):
            self.type_error(value, go_type, path, owner)
            return ABSENT
        assert go_type.elem is not None
        items = []
        for item in value:
            decoded = self.value(item, go_type.elem, path, owner)
            items.append(zero_value(go_type.elem) if decoded is ABSENT else decoded)
        return items

    def struct(self, value: Any, go_type: GoType, path: tuple[str, ...], owner: str) -> Any:
        if not isinstance(value, dict):
            self.type_error(value, go_type, path, owner)
            return ABSENT
        result: dict[str, Any] = {}
        for key, item in value.items():
            found = go_type.field_type(key)
            if found is None:
                continue
            name, field_type = found
            decoded = self.value(item, field_type, (*path, name), go_type.struct_name)
            if decoded is not ABSENT:
                result[name] = decoded
        return result


def _describe(value: Any, go_type: GoType) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if go_type.kind == "int":
        return f"number {value!r}"
    return "number"


def go_type_name(value: Any) -> str:
    """What Go's ``%T`` prints for a value decoded into ``any``."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def model_reader(request_type: str) -> Callable[[Any], str | None]:
    """A route's ``model_of``: the model a body of Go type ``request_type`` names, read as Ollama's
    decoder reads that one field, or None when there is none to govern."""
    shape = struct(request_type, {"model": STRING})

    def model_of(body: Any) -> str | None:
        """The model the client named, or None when there is none to govern."""
        try:
            model = decode(body, shape).get("model")
        except GoDecodeError:
            return None
        return model if isinstance(model, str) and model else None

    return model_of
