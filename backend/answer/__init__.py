"""The answer process (--answer-process, see README.md); app.py wires it into `serve`."""
