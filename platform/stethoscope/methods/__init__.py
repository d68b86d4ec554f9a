"""ASD methods: one module each, every one a :class:`~stethoscope.methods.base.Method` registered by name.

``methods.get("autoencoder")`` returns the class; ``methods.names()`` lists them all. Modules in this package are
discovered automatically, so adding a method is adding a module with a ``@register``-ed class.
"""

from stethoscope.methods.base import Method, get, names, register

__all__ = ["Method", "get", "names", "register"]
