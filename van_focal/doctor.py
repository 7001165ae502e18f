"""`python -m van_focal.doctor` as before the package was split into layers: the tool is now
`van_focal.cli.doctor`, installed as the console script `van-focal-doctor`."""
from van_focal.cli.doctor import *  # noqa: F401,F403
from van_focal.cli.doctor import run

if __name__ == '__main__':
    run()
