"""One strict registry shape for every plug point (selectors, environments, objectives): the class name is
the key, the YAML ``class_path``, the test id and the log label. A second class with a taken name raises
(re-importing the same module does not); an unknown name raises with the list of known ones."""

from __future__ import annotations

from typing import Generic, TypeVar

Plugin = TypeVar("Plugin", bound=type)


class Registry(Generic[Plugin]):
    """Subclasses of ``base`` by class name; ``kind`` names them in messages ("selector")."""

    def __init__(self, base: type, kind: str) -> None:
        self.base, self.kind = base, kind
        self._classes: dict[str, type] = {}

    def register(self, cls: Plugin) -> Plugin:
        """Class decorator: make ``cls`` buildable by its class name."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            article = "an" if self.base.__name__[0] in "AEIOU" else "a"
            raise TypeError(f"register_{self.kind} expects {article} {self.base.__name__} subclass; got {cls!r}.")
        known = self._classes.get(cls.__name__)
        if known is not None and _qualified(known) != _qualified(cls):
            raise ValueError(f"{self._article_kind()} named {cls.__name__!r} is already registered "
                             f"({_qualified(known)}); rename the class.")
        self._classes[cls.__name__] = cls
        return cls

    def build(self, name: str, **kwargs: object):
        """An instance of the registered class ``name`` built with ``kwargs``."""
        if name not in self._classes:
            raise ValueError(f"Unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}.")
        return self._classes[name](**kwargs)

    def get(self, name: str) -> type | None:
        """The class registered as ``name``, or None."""
        return self._classes.get(name)

    def names(self) -> list[str]:
        """Names of all registered classes, sorted."""
        return sorted(self._classes)

    def _article_kind(self) -> str:
        return f"{'An' if self.kind[0] in 'aeiou' else 'A'} {self.kind}"


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
