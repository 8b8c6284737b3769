"""Entry points: one module per command, each with build_parser() and main(argv=None); the flags
and the environment (environment.py) become typed settings here and nowhere below."""
