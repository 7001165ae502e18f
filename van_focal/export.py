"""`python -m van_focal.export` as before the package was split into layers: the tool is now
`van_focal.cli.export`, installed as the console script `van-focal-export`."""
from van_focal.cli.export import *  # noqa: F401,F403
from van_focal.cli.export import run

if __name__ == '__main__':
    run()
