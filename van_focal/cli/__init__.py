"""The command-line tools: `van-focal-predict`, `-export`, `-doctor`, `-shapes` (also `python -m
van_focal.cli.NAME`), and the argument plumbing shared with train.py, validate.py and benchmark.py."""
