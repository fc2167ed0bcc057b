"""zone."""
