"""One module per subcommand, each exposing COMMAND: a `cli.app.Command` (asv's shape) with its `summary`,
`add_arguments(parser, context)`, `execute(args, context) -> exit status`, and `run(**options)` for Python."""
