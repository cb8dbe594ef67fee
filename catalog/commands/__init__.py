"""One module per command of ``python -m catalog``: its arguments and its run function.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int`` (the exit
status), and is a thin layer over library calls: library modules never import a command.
"""
