"""resolver: a filtering DNS resolver for managed work phones."""

__version__ = "0.1.0"
