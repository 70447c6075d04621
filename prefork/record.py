"""``@dataclass`` for prefork's small records, at a fraction of what the standard one costs to define.

The standard decorator compiles five or six methods for each class as its module is
imported (``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, and ``__setattr__`` and
``__delattr__`` when frozen): about 4 million instructions for a small frozen class,
and the 17 records on the path of ``prefork run`` cost more than a sixth of its time
to the first answer (bench: startup). This one compiles only ``__init__`` (so creating
a record costs what it always did); equality, hashing, ``repr`` and immutability are
the shared functions below, with the standard one's behaviour:

- fields are the class's annotations, in order, with a default from the class body or from
  ``dataclasses.field(default=..., default_factory=..., repr=...)``;
- ``eq``: equal when of the same class with equal fields (in order), else ``NotImplemented``;
- hashing: by the fields when ``frozen``, unhashable (``__hash__ = None``) when not, as
  ``dataclass(eq=True)`` decides; a method the class defines itself is kept;
- ``frozen``: assigning or deleting an attribute raises ``dataclasses.FrozenInstanceError``;
- ``repr``: ``Name(field=value, ...)`` without the fields declared with ``repr=False``.

Not supported (refused, so nothing silently differs): inheriting fields, ``ClassVar``,
``InitVar``, ``field(init=False)``, keyword-only fields, ``order``, ``__post_init__``.
:class:`~prefork.settings.Settings` stays a standard dataclass: its declaration is read
through ``dataclasses.fields``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")
MISSING: Any = dataclasses.MISSING
FACTORY = object()  # an __init__ argument's default when the field has a default_factory


@overload
def dataclass(cls: type[T], /) -> type[T]: ...


@overload
def dataclass(*, frozen: bool = False) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(dataclasses.field,))
def dataclass(cls: type[T] | None = None, /, *, frozen: bool = False) -> type[T] | Callable[[type[T]], type[T]]:
    """``@dataclass`` or ``@dataclass(frozen=True)``, as the standard decorator with its defaults."""
    if cls is None:
        return lambda cls: make_record(cls, frozen)
    return make_record(cls, frozen)


def make_record(cls: type[T], frozen: bool) -> type[T]:
    refuse_what_differs(cls)
    names, shown, defaults, factories = read_fields(cls)
    methods: dict[str, Any] = {"__init__": init_function(cls, names, defaults, factories, frozen),
                               "__repr__": record_repr, "__eq__": record_eq, "__match_args__": tuple(names)}
    for name, method in methods.items():  # as the standard decorator: what the class defines itself stays
        if name not in cls.__dict__:
            setattr(cls, name, method)
    cls.__record_fields__, cls.__record_shown__ = tuple(names), tuple(shown)  # type: ignore[attr-defined]
    # Hashing as dataclass(eq=True) decides; a __hash__ the class wrote stays (defining __eq__ sets it to None).
    own_hash = cls.__dict__.get("__hash__", MISSING)
    if own_hash is MISSING or (own_hash is None and "__eq__" in cls.__dict__):
        cls.__hash__ = record_hash if frozen else None  # type: ignore[assignment]
    if frozen:
        cls.__setattr__ = frozen_setattr  # type: ignore[method-assign]
        cls.__delattr__ = frozen_delattr  # type: ignore[method-assign]
    return cls


def refuse_what_differs(cls: type) -> None:
    """What the standard decorator would do otherwise than a record: refused, never silently different."""
    for base in cls.__mro__[1:]:
        if hasattr(base, "__record_fields__") or hasattr(base, "__dataclass_fields__"):
            raise TypeError(f"{cls.__qualname__}: a record inherits no fields")
    for name in ("__post_init__", "__setattr__", "__delattr__"):
        if name in cls.__dict__:
            raise TypeError(f"{cls.__qualname__}: a record defines no {name}")
    for name, annotation in own_annotations(cls).items():
        value = cls.__dict__.get(name)
        if "ClassVar" in str(annotation) or "InitVar" in str(annotation):
            raise TypeError(f"{cls.__qualname__}.{name}: a record has no ClassVar or InitVar")
        if isinstance(value, dataclasses.Field) and (not value.init or value.kw_only is True):
            raise TypeError(f"{cls.__qualname__}.{name}: a record's fields are all positional __init__ arguments")


def read_fields(cls: type) -> tuple[list[str], list[str], dict[str, Any], dict[str, Callable[[], Any]]]:
    """The fields in order, those repr shows, the defaults and the default factories; as dataclass leaves the
    class: a plain default stays a class attribute, a field() default becomes one, a factory leaves none."""
    names: list[str] = []
    shown: list[str] = []
    defaults: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    for name in own_annotations(cls):
        names.append(name)
        value = cls.__dict__.get(name, MISSING)
        if not isinstance(value, dataclasses.Field):
            shown.append(name)
            if value is not MISSING:
                defaults[name] = value
            continue
        if value.repr:
            shown.append(name)
        delattr(cls, name)
        if value.default_factory is not MISSING:
            factories[name] = value.default_factory  # type: ignore[assignment]
        elif value.default is not MISSING:
            defaults[name] = value.default
            setattr(cls, name, value.default)
    return names, shown, defaults, factories


def own_annotations(cls: type) -> dict[str, Any]:
    """The class's own annotations (strings, under ``from __future__ import annotations``), in order."""
    return cls.__dict__.get("__annotations__", {})  # type: ignore[no-any-return]  # noqa: RUF063 (inspect is not needed)


def init_function(cls: type, names: list[str], defaults: dict[str, Any], factories: dict[str, Callable[[], Any]],
                  frozen: bool) -> Callable[..., None]:
    """The one compiled method: ``__init__(self, field, ..., field=default)``, each argument stored."""
    scope: dict[str, Any] = {"FACTORY": FACTORY, "set_field": object.__setattr__}
    params, lines, defaulted = ["self"], [], False
    for name in names:
        value = name
        if name in factories:
            scope[f"factory_{name}"] = factories[name]
            params.append(f"{name}=FACTORY")
            value = f"factory_{name}() if {name} is FACTORY else {name}"
        elif name in defaults:
            scope[f"default_{name}"] = defaults[name]
            params.append(f"{name}=default_{name}")
        elif defaulted:
            raise TypeError(f"{cls.__qualname__}.{name}: a field without a default follows one with a default")
        else:
            params.append(name)
        defaulted = defaulted or name in defaults or name in factories
        lines.append(f"    set_field(self, {name!r}, {value})" if frozen else f"    self.{name} = {value}")
    source = f"def __init__({', '.join(params)}):\n" + ("\n".join(lines) or "    pass") + "\n"
    exec(source, scope)  # the source is built above from the class's own field names
    function: Callable[..., None] = scope["__init__"]
    function.__qualname__ = f"{cls.__qualname__}.__init__"
    function.__module__ = cls.__module__
    return function


def values(record: Any) -> tuple[Any, ...]:
    return tuple([getattr(record, name) for name in record.__record_fields__])


def record_repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_shown__)
    return f"{type(self).__qualname__}({shown})"


def record_eq(self: Any, other: object) -> object:  # a bool, or NotImplemented
    if other.__class__ is not self.__class__:
        return NotImplemented
    return values(self) == values(other)


def record_hash(self: Any) -> int:
    return hash(values(self))


def frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def frozen_delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
