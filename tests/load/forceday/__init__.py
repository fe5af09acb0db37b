"""The force-day load test (issue 18): 30,000 simulated work phones, each on its own loopback address, replay a
day of DNS against a running resolver, and every answer is checked against the policy.

- ``world``: who the phones are (addresses, groups, iOS or Android, UDP or TCP), what they ask (Tranco-ranked
  names, blocked platforms, junk) and how often over a day; the resolver's config and the upstream's zone.
- ``oracle``: the verdict each answer should carry, from the product's own policy build, plus a few verdicts
  written down by hand that the policy build must agree with.
- ``sim``: the phones themselves: a single-threaded epoll loop for UDP, a few threads for TCP, stats per second.
- ``sample``: the resolver's CPU (/proc) and cache counters (/metrics) every few seconds.
- ``report``: the plots (matplotlib) and the section of tests/load/RESULTS.md.
- ``__main__``: ``python -m tests.load.forceday``: nsd and the resolver on loopback, the run, the report.

Loopback only: the phones are 127.20.0.0/16, the resolver 127.0.0.1, the upstream a loopback nsd (or, in the
quick test, tests/support/authserver.py) that answers every name the phones ask.
"""
