"""The `workbench` commands: one module per command, each with `add_arguments(parser)` and `run(args)`.

A command only adapts: it turns parsed flags into a call of its analysis core and the core's result into
printed text and a JSON body. Decisions and defaults belong to the cores; the shared flags and helpers are
in `workbench.commands.flags`. `workbench.cli` maps command names to these modules; nothing below the
commands imports them.
"""
