"""`python -m van_focal.convert IN OUT --model NAME`: the tool is `van_focal.cli.convert`, installed as the
console script `van-focal-convert`."""
from van_focal.cli.convert import *  # noqa: F401,F403
from van_focal.cli.convert import run

if __name__ == '__main__':
    run()
