"""A cheaper ``__init__`` for the frozen dataclasses made on every request.

A frozen dataclass sets each field with ``object.__setattr__(self, name, value)``, looked up
and called anew per field; for the records one governed request builds (the ``Context``, the
decisions, the scheduler's candidate, ...) that was a large part of the governor's own cost. This
``__init__`` binds the setter once per instance, the way ``attrs`` builds its frozen classes,
and does nothing else differently: the same parameters and defaults, the same
``__post_init__``, and the class stays a frozen dataclass (``replace``, ``fields``, equality).

    @cheap_init
    @dataclass(frozen=True, slots=True)
    class Record: ...
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["cheap_init"]

T = TypeVar("T")

_FACTORY: Any = type("_Factory", (), {"__repr__": lambda self: "<factory>"})()
"""The default of a field its ``default_factory`` makes (``dataclasses`` marks it the same way)."""


def cheap_init(cls: type[T]) -> type[T]:
    """Replace a frozen dataclass's generated ``__init__`` with one that sets its fields through
    one bound setter. A class with ``init=False`` or ``kw_only`` fields keeps the dataclass's own
    ``__init__`` (none of the per-request records has them)."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen:
        raise TypeError(f"cheap_init is for frozen dataclasses, not {cls.__qualname__}")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(not f.init or f.kw_only for f in fields):
        return cls
    namespace: dict[str, Any] = {"_bind": object.__setattr__.__get__, "_FACTORY": _FACTORY}
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
    body += [f"    _set('{f.name}', {f.name})" for f in fields]
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = "\n".join([f"def __init__(self, {', '.join(signature)}):", "    _set = _bind(self)", *body])
    exec(source, namespace)  # the text is made of field names alone
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = {**cls.__init__.__annotations__}
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
