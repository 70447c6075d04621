"""prefork.record's @dataclass behaves as the standard one for what prefork's records and settings use,
the standard module's functions take records, and what a record does not support is refused."""

from __future__ import annotations

import dataclasses
import pickle
from collections import Counter
from typing import Any, ClassVar

import pytest

from prefork import record

STANDARD = (dataclasses.dataclass, dataclasses.field)
RECORD = (record.dataclass, record.field)


def declare(how: tuple[Any, Any], frozen: bool) -> dict[str, type]:
    """The same class bodies, declared the standard way or as records (``how``: the decorator and field())."""
    decorate, field = how

    class Plain:
        kind: str
        host: str = ""
        port: int = 0

        def __str__(self) -> str:
            return f"{self.host}:{self.port}"

    class Factories:
        name: str
        counts: Counter[str] = field(default_factory=Counter)
        data: bytearray = field(default_factory=bytearray)
        hidden: bool = field(default=False, repr=False)

    class OwnHash:
        value: int = 0

        def __hash__(self) -> int:
            return 7

    class Empty:
        pass

    class PostInit:
        given: int = 0
        derived: int = field(default=0, repr=False)

        def __post_init__(self) -> None:
            object.__setattr__(self, "derived", self.given * 2)

    classes = {"Plain": Plain, "Factories": Factories, "OwnHash": OwnHash, "Empty": Empty, "PostInit": PostInit}
    return {name: decorate(frozen=frozen)(cls) for name, cls in classes.items()}


ARGUMENTS = {"Plain": [("tcp",), ("tcp", "h", 80), ("tcp",), {"kind": "unix", "port": 1}],
             "Factories": [("a",), ("a", Counter(x=1)), ("b",), {"name": "c", "hidden": True}],
             "OwnHash": [(), (1,), (2,), {"value": 3}],
             "Empty": [(), (), (), {}],
             "PostInit": [(), (1,), (2,), {"given": 3}]}


def build(cls: type, args: Any) -> Any:
    return cls(**args) if isinstance(args, dict) else cls(*args)


def behaviour(cls: type) -> list[Any]:
    """What a user of the class can see: instances' repr, str, equality, hashing, attributes, errors."""
    seen: list[Any] = [cls.__match_args__ if hasattr(cls, "__match_args__") else ()]  # type: ignore[attr-defined]
    instances = [build(cls, args) for args in ARGUMENTS[cls.__name__]]
    again = [build(cls, args) for args in ARGUMENTS[cls.__name__]]
    for one, same in zip(instances, again, strict=True):
        seen += [repr(one).split(".")[-1], str(one) if type(one).__str__ is not object.__str__ else "",
                 one == same, one != same, one == object(), [one == other for other in instances], vars(one)]
        try:
            seen.append(hash(one) == hash(same))
        except TypeError as exc:
            seen.append(str(exc))
        for change, args in ((setattr, ("port", 9)), (delattr, ("port",)), (setattr, ("new", 1))):
            try:
                change(one, *args)
                seen.append(("changed", vars(one)))
            except AttributeError as exc:
                seen.append((type(exc).__name__, str(exc)))
    factory_made = [build(cls, ARGUMENTS[cls.__name__][0]) for _ in range(2)]
    if hasattr(factory_made[0], "counts"):
        seen.append(factory_made[0].counts is factory_made[1].counts)  # a new default per instance
    seen.append(sorted(name for name in ("kind", "host", "port", "name", "counts", "hidden", "value", "derived")
                       if name in cls.__dict__))  # which defaults stay class attributes
    # The standard module's functions, on both.
    one = instances[-1]
    seen += [dataclasses.is_dataclass(cls), dataclasses.is_dataclass(one), dataclasses.asdict(one),
             dataclasses.astuple(one), [(f.name, f.repr, f.default) for f in dataclasses.fields(cls)],
             vars(dataclasses.replace(one))]
    if ARGUMENTS[cls.__name__][0]:
        name = dataclasses.fields(cls)[0].name
        seen.append(vars(dataclasses.replace(one, **{name: ARGUMENTS[cls.__name__][0][0]})))
    return seen


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_a_record_behaves_as_a_standard_dataclass(frozen: bool, name: str) -> None:
    standard = declare(STANDARD, frozen)[name]
    ours = declare(RECORD, frozen)[name]
    assert behaviour(ours) == behaviour(standard)


@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_record_fields_and_replace_are_the_standard_ones(name: str) -> None:
    standard = declare(STANDARD, True)[name]
    ours = declare(RECORD, True)[name]
    described = [(f.name, f.repr, f.default, f.default_factory) for f in dataclasses.fields(standard)]
    assert [f.type for f in record.fields(ours)] == [f.type for f in dataclasses.fields(standard)]
    assert [(f.name, f.repr, f.default, f.default_factory) for f in record.fields(ours)] == \
        [(n, r, record.MISSING if d is dataclasses.MISSING else d, record.MISSING if d2 is dataclasses.MISSING else d2)
         for n, r, d, d2 in described]
    for args in ARGUMENTS[name]:
        for changes in ({}, {f.name: getattr(build(ours, args), f.name) for f in record.fields(ours)}):
            assert vars(record.replace(build(ours, args), **changes)) == \
                vars(dataclasses.replace(build(standard, args), **changes))
    with pytest.raises(TypeError):
        record.replace(build(ours, ARGUMENTS[name][0]), nope=1)


def test_settings_read_through_the_standard_module_as_before() -> None:
    """A hook may have read ``server.settings`` with dataclasses' functions: they still work."""
    from prefork.settings import FIELDS, Settings

    settings = Settings(app="m:f")
    assert [f.name for f in dataclasses.fields(Settings)] == list(FIELDS)
    assert dataclasses.replace(settings, workers=3).workers == 3 and dataclasses.asdict(settings)["app"] == "m:f"
    assert all(f.metadata["meta"] is FIELDS[f.name].metadata["meta"] for f in dataclasses.fields(settings))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.workers = 3  # type: ignore[misc]


def test_missing_and_unknown_arguments_are_refused_as_by_a_dataclass() -> None:
    for how in (STANDARD, RECORD):
        cls = declare(how, True)["Plain"]
        with pytest.raises(TypeError):
            cls()
        with pytest.raises(TypeError):
            cls("tcp", nope=1)
        with pytest.raises(TypeError):
            cls("tcp", "h", 1, 2)


def test_a_frozen_record_pickles_and_compares_after() -> None:
    from prefork.sockets import Address  # a record that crosses into hooks and logs

    address = Address("tcp", host="127.0.0.1", port=80)
    assert pickle.loads(pickle.dumps(address)) == address and str(address) == "127.0.0.1:80"


def test_what_a_record_does_not_support_is_refused() -> None:
    class Base:
        a: int = 0

    refused: list[type] = []

    class Derived(record.dataclass(Base)):  # type: ignore[misc]
        b: int = 0

    refused.append(Derived)

    class WithClassVar:
        shared: ClassVar[int] = 0

    refused.append(WithClassVar)

    class StandardField:
        a: int = dataclasses.field(default=0)

    refused.append(StandardField)

    class OrderOfDefaults:
        a: int = 0
        b: int

    refused.append(OrderOfDefaults)
    for cls in refused:
        with pytest.raises(TypeError):
            record.dataclass(cls)
