"""One module per subcommand, each exposing COMMAND: an object with `description(context)`,
`add_arguments(parser, context)` and `run(args, context) -> exit status` (asv's shape)."""
