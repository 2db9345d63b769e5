"""A cheaper ``__init__`` for the frozen dataclasses made on every request.

A frozen dataclass sets each field with ``object.__setattr__(self, name, value)``, looked up
and called anew per field; for the records one governed request builds (the ``Context``, the
decisions, the scheduler's candidate, ...) that was a large part of the governor's own cost. This
``__init__`` sets each field through its slot's own setter, found once when the class is made
(a class without slots binds ``object.__setattr__`` once per instance, the way ``attrs`` builds
its frozen classes), and does nothing else differently: the same parameters and defaults, the same
``__post_init__``, and the class stays a frozen dataclass (``replace``, ``fields``, equality).

    @cheap_init
    @dataclass(frozen=True, slots=True)
    class Record: ...

``unchecked_maker`` makes the same kind of constructor without ``__post_init__``, for a class's
own methods that derive an instance from values already checked.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["cheap_init", "unchecked_maker"]

T = TypeVar("T")

_FACTORY: Any = type("_Factory", (), {"__repr__": lambda self: "<factory>"})()
"""The default of a field its ``default_factory`` makes (``dataclasses`` marks it the same way)."""


def cheap_init(cls: type[T]) -> type[T]:
    """Replace a frozen dataclass's generated ``__init__`` with one that sets its fields through
    their slots' own setters (or one bound setter when the class has no slots). A class with
    ``init=False`` or ``kw_only`` fields keeps the dataclass's own ``__init__`` (none of the
    per-request records has them)."""
    fields = _frozen_fields(cls)
    if any(not f.init or f.kw_only for f in fields):
        return cls
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    signature: list[str] = []
    body: list[str] = []
    for f in fields:
        if f.default_factory is not dataclasses.MISSING:  # a new value per instance
            namespace[f"_factory_{f.name}"] = f.default_factory
            signature.append(f"{f.name}=_FACTORY")
            body.append(f"    if {f.name} is _FACTORY: {f.name} = _factory_{f.name}()")
        elif f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            signature.append(f"{f.name}=_default_{f.name}")
        else:
            signature.append(f.name)
    body += _setting(cls, fields, namespace)
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = "\n".join([f"def __init__(self, {', '.join(signature)}):", *body])
    exec(source, namespace)  # the text is made of field names alone
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = {**cls.__init__.__annotations__}
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def unchecked_maker(cls: type[T]) -> Callable[..., T]:
    """A function that makes an instance of the frozen dataclass ``cls`` from every field's value,
    in field order, without ``__post_init__``: for a class's own methods that derive a new
    instance from values already checked (``Decision.replace``)."""
    fields = _frozen_fields(cls)
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    body = ["    self = _new(_cls)", *_setting(cls, fields, namespace), "    return self"]
    source = "\n".join([f"def _make({', '.join(f.name for f in fields)}):", *body])
    exec(source, namespace)  # the text is made of field names alone
    make: Callable[..., T] = namespace["_make"]
    make.__qualname__ = f"unchecked {cls.__qualname__}"
    return make


def _frozen_fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"cheap_init and unchecked_maker are for frozen dataclasses, not {cls.__qualname__}")
    return dataclasses.fields(cls)


def _setting(cls: type, fields: tuple[dataclasses.Field[Any], ...], namespace: dict[str, Any]) -> list[str]:
    """The lines that set ``self``'s fields: through each slot's setter when every field is a
    slot (a third cheaper than ``object.__setattr__``), else through one bound setter."""
    slots = [cls.__dict__.get(f.name) for f in fields]
    if all(isinstance(slot, types.MemberDescriptorType) for slot in slots):
        for f, slot in zip(fields, slots, strict=True):
            namespace[f"_set_{f.name}"] = slot.__set__  # type: ignore[union-attr]
        return [f"    _set_{f.name}(self, {f.name})" for f in fields]
    namespace["_bind"] = object.__setattr__.__get__
    return ["    _set = _bind(self)", *(f"    _set('{f.name}', {f.name})" for f in fields)]
