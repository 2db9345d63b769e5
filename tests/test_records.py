"""``cheap_init``: the per-request records keep every behaviour of their dataclass ``__init__``."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from policies.context import Context
from policies.decision import Decision
from policies.ollama import RunnerOptions
from policies.records import _FACTORY as FACTORY
from policies.records import cheap_init, unchecked_maker
from policies.scheduler import Budget, Candidate
from proxy.govern.chain import ChainOutcome
from proxy.govern.pipeline import Decided
from proxy.request.parse import ClientRequest
from proxy.request.prompt import PromptSize

PER_REQUEST = (
    Budget,
    Candidate,
    ChainOutcome,
    ClientRequest,
    Context,
    Decided,
    Decision,
    PromptSize,
    RunnerOptions,
)


def sample(*, cheap: bool) -> type:
    @dataclass(frozen=True, slots=True)
    class Sample:
        name: str
        size: int = 3
        tags: tuple[str, ...] = ()

        def __post_init__(self) -> None:
            if self.size < 0:
                raise ValueError("size must not be negative")

    return cheap_init(Sample) if cheap else Sample


class TestSameBehaviour:
    def test_positional_keyword_and_defaults(self) -> None:
        plain, cheap = sample(cheap=False), sample(cheap=True)
        for args, kwargs in [
            (("a",), {}),
            (("a", 5), {}),
            ((), {"name": "b", "tags": ("x",)}),
            (("c",), {"size": 0}),
        ]:
            assert dataclasses.astuple(cheap(*args, **kwargs)) == dataclasses.astuple(plain(*args, **kwargs))

    def test_post_init_runs(self) -> None:
        with pytest.raises(ValueError, match="negative"):
            sample(cheap=True)("a", -1)

    def test_bad_arguments_raise_type_error(self) -> None:
        cheap = sample(cheap=True)
        with pytest.raises(TypeError):
            cheap()
        with pytest.raises(TypeError):
            cheap("a", nope=1)
        with pytest.raises(TypeError):
            cheap("a", 1, (), "extra")

    def test_still_frozen_comparable_and_replaceable(self) -> None:
        cheap = sample(cheap=True)
        one = cheap("a", 2)
        with pytest.raises(dataclasses.FrozenInstanceError):
            one.size = 4  # type: ignore[misc]
        assert one == cheap("a", 2) and hash(one) == hash(cheap("a", 2))
        assert dataclasses.replace(one, size=7) == cheap("a", 7)

    @pytest.mark.parametrize("maker", [cheap_init, unchecked_maker])
    def test_refuses_a_class_that_is_not_a_frozen_dataclass(self, maker: Callable[[type], object]) -> None:
        @dataclass
        class Mutable:
            x: int

        with pytest.raises(TypeError, match="frozen dataclasses"):
            maker(Mutable)

    def test_a_default_factory_makes_a_value_per_instance(self) -> None:
        @cheap_init
        @dataclass(frozen=True)
        class WithFactory:
            items: list[int] = dataclasses.field(default_factory=list)

        first, second = WithFactory(), WithFactory()
        assert first.items == [] and first.items is not second.items
        assert WithFactory([1]).items == [1]

    def test_kw_only_fields_keep_the_dataclass_init(self) -> None:
        @dataclass(frozen=True, kw_only=True)
        class KeywordsOnly:
            x: int

        original = KeywordsOnly.__init__
        assert cheap_init(KeywordsOnly).__init__ is original

    def test_a_class_without_slots_is_set_through_object_setattr(self) -> None:
        @cheap_init
        @dataclass(frozen=True)
        class Plain:
            name: str
            size: int = 3

        assert "_set" in Plain.__init__.__code__.co_varnames
        assert dataclasses.astuple(Plain("a")) == ("a", 3)
        with pytest.raises(dataclasses.FrozenInstanceError):
            Plain("a").size = 4  # type: ignore[misc]


class TestUncheckedMaker:
    def test_sets_every_field_in_order_without_post_init(self) -> None:
        cheap = sample(cheap=True)
        make = unchecked_maker(cheap)
        made = make("a", -1, ("x",))  # __post_init__ would refuse the size
        assert type(made) is cheap
        assert dataclasses.astuple(made) == ("a", -1, ("x",))
        assert made == make("a", -1, ("x",)) and made != cheap("a", 1)  # compares as a dataclass
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.size = 4  # type: ignore[misc]

    def test_takes_exactly_the_fields(self) -> None:
        make = unchecked_maker(sample(cheap=False))
        with pytest.raises(TypeError):
            make("a", 1)
        assert list(inspect.signature(make).parameters) == ["name", "size", "tags"]


@pytest.mark.parametrize("cls", PER_REQUEST, ids=lambda cls: cls.__name__)
def test_per_request_records_have_the_cheap_init_and_their_signature(cls: type) -> None:
    """Each record built on every request sets its fields through their slots' setters, and
    takes exactly its fields, in order, with their defaults."""
    setters = {f"_set_{f.name}" for f in dataclasses.fields(cls)}
    assert setters <= set(cls.__init__.__code__.co_names)

    def default(p: inspect.Parameter) -> object:
        return dataclasses.MISSING if p.default in (inspect.Parameter.empty, FACTORY) else p.default

    expected = [
        (f.name, f.default, f.default_factory is not dataclasses.MISSING) for f in dataclasses.fields(cls)
    ]
    parameters = inspect.signature(cls).parameters.values()
    assert [(p.name, default(p), p.default is FACTORY) for p in parameters] == expected
