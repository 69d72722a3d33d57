"""The command line: app (the parser and `main`), options, and commands/ (one module per subcommand)."""
