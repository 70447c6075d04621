"""prefork.record's @dataclass behaves as the standard one for what prefork's records use, and refuses the rest."""

from __future__ import annotations

import dataclasses
import pickle
from collections import Counter
from dataclasses import field
from typing import Any, ClassVar

import pytest

from prefork import record


def declare(decorate: Any, frozen: bool) -> dict[str, type]:
    """The same class bodies, declared with ``decorate`` (the standard decorator or the record's)."""

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

    classes = {"Plain": Plain, "Factories": Factories, "OwnHash": OwnHash, "Empty": Empty}
    return {name: decorate(frozen=frozen)(cls) for name, cls in classes.items()}


ARGUMENTS = {"Plain": [("tcp",), ("tcp", "h", 80), ("tcp",), {"kind": "unix", "port": 1}],
             "Factories": [("a",), ("a", Counter(x=1)), ("b",), {"name": "c", "hidden": True}],
             "OwnHash": [(), (1,), (2,), {"value": 3}],
             "Empty": [(), (), (), {}]}


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
    seen.append(sorted(name for name in ("kind", "host", "port", "name", "counts", "hidden", "value")
                       if name in cls.__dict__))  # which defaults stay class attributes
    return seen


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("name", sorted(ARGUMENTS))
def test_a_record_behaves_as_a_standard_dataclass(frozen: bool, name: str) -> None:
    standard = declare(dataclasses.dataclass, frozen)[name]
    ours = declare(record.dataclass, frozen)[name]
    assert behaviour(ours) == behaviour(standard)


def test_missing_and_unknown_arguments_are_refused_as_by_a_dataclass() -> None:
    for decorate in (dataclasses.dataclass, record.dataclass):
        cls = declare(decorate, True)["Plain"]
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

    class WithPostInit:
        a: int = 0

        def __post_init__(self) -> None:
            pass

    refused.append(WithPostInit)

    class NotInInit:
        a: int = field(default=0, init=False)

    refused.append(NotInInit)

    class OrderOfDefaults:
        a: int = 0
        b: int

    refused.append(OrderOfDefaults)
    for cls in refused:
        with pytest.raises(TypeError):
            record.dataclass(cls)
