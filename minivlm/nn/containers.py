"""Modules that hold other modules under the names "0", "1", ...: ModuleList, Sequential."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .module import Module


class ModuleList(Module):
    """A list of sub-modules, registered as children "0", "1", ... (no forward of its own)."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> ModuleList:
        if not isinstance(module, Module):
            raise TypeError(
                f"{type(self).__name__}.append: expected a Module, got {type(module).__name__}"
            )
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, index: int) -> Module:
        items = list(self._modules.values())
        if not -len(items) <= index < len(items):
            raise IndexError(
                f"{type(self).__name__}: index {index} is out of range for {len(items)} modules"
            )
        return items[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied one after another: forward(x) = m_n(...m_1(m_0(x)))."""

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def forward(self, x):
        for module in self:
            x = module(x)
        return x
