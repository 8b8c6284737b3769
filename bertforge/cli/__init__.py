"""Entry points: one module per command, each with build_parser() and main(argv=None)."""
