"""Long fuzz runs (`make fuzz`, not part of `make test`): each module here has `main(argv) -> int`."""
