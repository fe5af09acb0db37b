"""resolver: a filtering DNS resolver for managed work phones."""

__version__ = "0.1.0"


def build() -> str:
    """``mypyc`` when the hot path runs compiled (setup.py), ``python`` when it runs interpreted."""
    from importlib.machinery import EXTENSION_SUFFIXES

    from resolver.core import wire

    return "mypyc" if (wire.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES)) else "python"
