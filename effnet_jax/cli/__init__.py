"""Command-line entry points; each only parses flags and calls the library."""
