"""Method registry. Every module in this package is imported, so a new method is one new file."""

import importlib
import pkgutil

from lps.methods.base import METHODS, Batch, Method, MethodContext

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["METHODS", "Batch", "Method", "MethodContext"]
