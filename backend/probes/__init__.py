"""Active probes of GSLB targets (see README.md); app.py wires the prober into `serve`."""
