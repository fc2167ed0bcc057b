"""`python -m backend.probes`: the prober's worker process (worker.py), started by `Prober`."""

from backend.probes.worker import main

main()
