"""Kubernetes API plumbing every part shares: the client, the informers, label selectors, Events."""
