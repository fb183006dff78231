"""Modules that are called as the function they are named after.

``liandan.predict(...)``, ``liandan.export(...)``, ``liandan.score(...)``,
``liandan.plan(...)``, ``liandan.tune(...)`` and ``liandan.report(...)`` are served
lazily by the package's ``__getattr__``. Importing the submodule of the same name
(training imports ``liandan.predict`` to evaluate, for example) sets the package's
attribute to the module, which would shadow the function from then on. Each of these
modules therefore ends with :func:`make_callable`, so calling the module calls its
function whichever of the two ``liandan.<name>`` is.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def make_callable(module_name: str, function: str) -> None:
    """Make ``sys.modules[module_name](...)`` call its attribute ``function``.

    The function is looked up at each call, so patching it on the module patches the
    call too.
    """

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, function)(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
