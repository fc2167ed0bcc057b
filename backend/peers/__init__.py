"""The localtargets exchange with the other clusters (see README.md); app.py wires it into `serve`."""
