"""`make bench` (`python -m bench`): the backend measured beside CoreDNS's own file plugin,
on real components.

See BENCHMARKS.md for the latest figures and bench/README.md for what each module measures.
"""
