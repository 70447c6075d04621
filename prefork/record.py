"""``@dataclass`` for prefork's records and settings, at a fraction of what the standard one costs.

Importing the standard module loads ``inspect`` (with ``ast``, ``dis``, ``tokenize``), and its
decorator compiles five or six methods for each class as its module is imported
(``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, and ``__setattr__`` and ``__delattr__``
when frozen): about 4 million instructions for a small frozen class and 26 million for
``Settings``. Together that was over a third of what ``prefork run`` spent of its own
before its first answer (bench: startup). A record compiles only its ``__init__`` (so
creating one costs what it always did); equality, hashing, ``repr`` and immutability are
the shared functions below, with the standard decorator's behaviour:

- fields are the class's annotations, in order, each with a default from the class body or
  from :func:`field` (``default=``, ``default_factory=``, ``repr=``, ``metadata=``), read back
  with :func:`fields`; :func:`replace` is ``dataclasses.replace``;
- ``__post_init__``, when the class defines it, runs at the end of ``__init__``;
- ``eq``: equal when of the same class with equal fields (in order), else ``NotImplemented``;
- hashing: by the fields when ``frozen``, unhashable (``__hash__ = None``) when not; a
  ``__hash__`` the class defines itself is kept, as are its own ``__init__``, ``__repr__``, ``__eq__``;
- ``frozen``: assigning or deleting an attribute raises ``dataclasses.FrozenInstanceError`` with
  the standard messages (the module is imported then, to raise it);
- ``repr``: ``Name(field=value, ...)`` without the fields declared with ``repr=False``;
- the standard module's functions (``dataclasses.fields``, ``replace``, ``asdict``, ``is_dataclass``)
  take records too (a hook may have used them on ``server.settings``): ``__dataclass_fields__``
  imports the standard module and describes the fields to it the first time it is read.

Not supported (refused, so nothing silently differs): inheriting fields, ``ClassVar``,
``InitVar``, ``init=False`` and keyword-only fields, ``order``, ``slots``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")


class Missing:
    """The type of :data:`MISSING`: no default given."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = Missing()
FACTORY = object()  # an __init__ argument's default when the field has a default_factory


class Field:
    """One field of a record: its name and type (the annotation, a string under ``from __future__ import
    annotations``), its default or default factory, whether repr shows it, its metadata."""

    __slots__ = ("default", "default_factory", "metadata", "name", "repr", "type")

    def __init__(self, default: Any, default_factory: Any, repr: bool, metadata: Mapping[str, Any] | None) -> None:
        self.name = ""  # these two are set when the class is made a record
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.metadata: Mapping[str, Any] = MappingProxyType(dict(metadata or {}))

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r}, default_factory={self.default_factory!r})"


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING, repr: bool = True,
          metadata: Mapping[str, Any] | None = None) -> Any:
    """A field's default (or default factory), whether repr shows it, and metadata, as ``dataclasses.field``."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, repr, metadata)


class StandardFields:
    """``__dataclass_fields__``, made when first read: the standard module's Field for each field."""

    def __get__(self, record: Any, cls: type) -> dict[str, Any]:
        import dataclasses  # only for whoever reads a record through the standard module

        described = {}
        for name, f in cls.__record_fields__.items():  # type: ignore[attr-defined]
            given: dict[str, Any] = {"repr": f.repr, "metadata": f.metadata}
            if f.default is not MISSING:
                given["default"] = f.default
            if f.default_factory is not MISSING:
                given["default_factory"] = f.default_factory
            standard: Any = dataclasses.field(**given)
            standard.name, standard.type = name, f.type
            standard._field_type = dataclasses._FIELD  # type: ignore[attr-defined]  # what fields() keeps
            described[name] = standard
        cls.__dataclass_fields__ = described  # type: ignore[attr-defined]  # read once
        return described


def fields(record: Any) -> tuple[Field, ...]:
    """A record's (or record class's) fields, in order."""
    return tuple(record.__record_fields__.values())


def replace(record: T, /, **changes: Any) -> T:
    """A new record with ``changes``, built through ``__init__`` (so ``__post_init__`` runs), as dataclasses does."""
    for name in changes:
        if name not in record.__record_fields__:  # type: ignore[attr-defined]
            raise TypeError(f"{type(record).__qualname__}.__init__() got an unexpected keyword argument {name!r}")
    values = {name: changes[name] if name in changes else getattr(record, name)
              for name in record.__record_fields__}  # type: ignore[attr-defined]
    return type(record)(**values)


@overload
def dataclass(cls: type[T], /) -> type[T]: ...


@overload
def dataclass(*, frozen: bool = False) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(field_specifiers=(field, Field))
def dataclass(cls: type[T] | None = None, /, *, frozen: bool = False) -> type[T] | Callable[[type[T]], type[T]]:
    """``@dataclass`` or ``@dataclass(frozen=True)``, as the standard decorator with its defaults."""
    if cls is None:
        return lambda cls: make_record(cls, frozen)
    return make_record(cls, frozen)


def make_record(cls: type[T], frozen: bool) -> type[T]:
    refuse_what_differs(cls)
    declared = read_fields(cls)
    methods: dict[str, Any] = {"__init__": init_function(cls, declared, frozen), "__repr__": record_repr,
                               "__eq__": record_eq, "__match_args__": tuple(declared)}
    for name, method in methods.items():  # as the standard decorator: what the class defines itself stays
        if name not in cls.__dict__:
            setattr(cls, name, method)
    cls.__record_fields__ = declared  # type: ignore[attr-defined]
    cls.__dataclass_fields__ = StandardFields()  # type: ignore[attr-defined]
    cls.__record_shown__ = tuple(name for name, f in declared.items() if f.repr)  # type: ignore[attr-defined]
    # Hashing as dataclass(eq=True) decides; a __hash__ the class wrote stays (defining __eq__ sets it to None).
    own_hash = cls.__dict__.get("__hash__", MISSING)
    if own_hash is MISSING or (own_hash is None and "__eq__" in cls.__dict__):
        cls.__hash__ = record_hash if frozen else None  # type: ignore[assignment]
    if frozen:
        cls.__setattr__ = frozen_setattr  # type: ignore[method-assign]
        cls.__delattr__ = frozen_delattr  # type: ignore[method-assign]
    return cls


def own_annotations(cls: type) -> dict[str, Any]:
    """The class's own annotations (strings, under ``from __future__ import annotations``), in order."""
    return cls.__dict__.get("__annotations__", {})  # type: ignore[no-any-return]  # noqa: RUF063 (no inspect)


def refuse_what_differs(cls: type) -> None:
    """What the standard decorator would do otherwise than a record: refused, never silently different."""
    for base in cls.__mro__[1:]:
        if "__record_fields__" in vars(base) or "__dataclass_fields__" in vars(base):
            raise TypeError(f"{cls.__qualname__}: a record inherits no fields")
    for name in ("__setattr__", "__delattr__", "__slots__"):
        if name in cls.__dict__:
            raise TypeError(f"{cls.__qualname__}: a record defines no {name}")
    for name, annotation in own_annotations(cls).items():
        if "ClassVar" in str(annotation) or "InitVar" in str(annotation) or "KW_ONLY" in str(annotation):
            raise TypeError(f"{cls.__qualname__}.{name}: a record has no ClassVar, InitVar or KW_ONLY")
        value = cls.__dict__.get(name)
        if value is not None and type(value).__name__ == "Field" and not isinstance(value, Field):
            raise TypeError(f"{cls.__qualname__}.{name}: dataclasses.field() in a record: use record.field()")


def read_fields(cls: type) -> dict[str, Field]:
    """The fields in order; as dataclass leaves the class: a plain default stays a class attribute, a
    field() default becomes one, a factory leaves none."""
    declared: dict[str, Field] = {}
    for name, annotation in own_annotations(cls).items():
        value = cls.__dict__.get(name, MISSING)
        if isinstance(value, Field):
            delattr(cls, name)
            if value.default is not MISSING:
                setattr(cls, name, value.default)
        else:
            value = Field(value, MISSING, True, None)
        value.name, value.type = name, annotation
        declared[name] = value
    return declared


def init_function(cls: type, declared: dict[str, Field], frozen: bool) -> Callable[..., None]:
    """The one compiled method: ``__init__(self, field, ..., field=default)``, each argument stored."""
    scope: dict[str, Any] = {"FACTORY": FACTORY, "set_field": object.__setattr__}
    params, lines, defaulted = ["self"], [], False
    for name, f in declared.items():
        value = name
        if f.default_factory is not MISSING:
            scope[f"factory_{name}"] = f.default_factory
            params.append(f"{name}=FACTORY")
            value = f"factory_{name}() if {name} is FACTORY else {name}"
        elif f.default is not MISSING:
            scope[f"default_{name}"] = f.default
            params.append(f"{name}=default_{name}")
        elif defaulted:
            raise TypeError(f"{cls.__qualname__}.{name}: a field without a default follows one with a default")
        else:
            params.append(name)
        defaulted = defaulted or f.default is not MISSING or f.default_factory is not MISSING
        lines.append(f"    set_field(self, {name!r}, {value})" if frozen else f"    self.{name} = {value}")
    if "__post_init__" in cls.__dict__:
        lines.append("    self.__post_init__()")
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
    from dataclasses import FrozenInstanceError  # the standard one, as callers catch it

    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def frozen_delattr(self: Any, name: str) -> None:
    from dataclasses import FrozenInstanceError

    raise FrozenInstanceError(f"cannot delete field {name!r}")
