"""Public suffixes (``com``, ``co.uk``, ``github.io``): names no list may block or allow as a whole.

An entry for a public suffix claims every name under it, registered by unrelated owners: ``||co.uk^`` in a list
would black-hole a country's companies, ``@@||github.io^`` would open every site hosted there. The Public Suffix
List comes with the ``publicsuffixlist`` package, read from its bundled file (nothing is downloaded: a resolver
must not depend on a third party's site to decide what it refuses). A newer list arrives with a package upgrade.

Both sections of the list count, ICANN's and the private one: a private suffix such as ``s3.amazonaws.com`` or
``blogspot.com`` blocked as a subtree takes down as many unrelated sites as ``co.uk`` does, and allowed as a
subtree it opens as many.

The rules are three sets of names spelled as ``normalise_name`` spells them (punycode for IDN): listed suffixes,
the bases of wildcard rules (``*.ck``: every name one label below ``ck``) and the exceptions to those
(``!www.ck``). ``covers_any`` checks a whole chunk of names with set operations and C-level maps (each name
hashed, and its parent made and hashed), so the bulk path runs no Python code per name; ``is_public_suffix``
answers for one name, for the line parsers and for callers such as the platform files.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from itertools import repeat
from operator import itemgetter
from typing import NamedTuple

from publicsuffixlist import PSLFILE

from resolver.lists.entries import normalise_name

REASON = "public suffix: would cover every name under it"


class Rules(NamedTuple):
    exact: frozenset[str]  # listed suffixes, and the base of each wildcard rule (``ck`` for ``*.ck``)
    wild: frozenset[str]  # ``ck`` for ``*.ck``: each name one label below it is a suffix …
    exceptions: frozenset[str]  # … except these (``www.ck``)


@functools.cache
def rules() -> Rules:
    """The bundled list, read once per process; immutable, so the cache holds no state that could change."""
    exact: set[str] = set()
    wild: set[str] = set()
    exceptions: set[str] = set()
    with open(PSLFILE, encoding="utf-8") as handle:
        for line in handle:
            rule = line.partition("//")[0].split()
            if not rule:
                continue
            text = rule[0]
            if text.startswith("!"):
                exceptions.add(normalise_name(text[1:]))
            elif text.startswith("*."):
                base = normalise_name(text[2:])
                wild.add(base)
                exact.add(base)  # a wildcard's base is a suffix too (the list's linter requires it to be listed)
            else:
                exact.add(normalise_name(text))
    return Rules(frozenset(exact), frozenset(wild), frozenset(exceptions))


def is_public_suffix(name: str) -> bool:
    """True if ``name`` (as ``normalise_name`` spells it) is a public suffix. A single label is: the list's
    default rule makes every top-level domain one, listed or not."""
    if "." not in name:
        return True
    exact, wild, exceptions = rules()
    if name in exact:
        return True
    return name.partition(".")[2] in wild and name not in exceptions


def covers_any(names: Iterable[str]) -> bool:
    """True if any of ``names`` may be a public suffix: a quick check of a whole chunk, exact for listed
    suffixes; a name under a wildcard rule that is one of its exceptions also answers True, and the caller's
    per-name check (``is_public_suffix``) then tells them apart."""
    exact, wild, _ = rules()
    if not isinstance(names, list):
        names = list(names)
    if not exact.isdisjoint(names):
        return True
    return not wild.isdisjoint(map(_PARENT, map(str.partition, names, repeat("."))))


_PARENT = itemgetter(2)
