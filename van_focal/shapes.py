"""`python -m van_focal.shapes` as before the package was split into layers: the tool is now
`van_focal.cli.shapes`, installed as the console script `van-focal-shapes`."""
from van_focal.cli.shapes import *  # noqa: F401,F403
from van_focal.cli.shapes import run

if __name__ == '__main__':
    run()
