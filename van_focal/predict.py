"""`python -m van_focal.predict` as before the package was split into layers: the tool is now
`van_focal.cli.predict`, installed as the console script `van-focal-predict`."""
from van_focal.cli.predict import *  # noqa: F401,F403
from van_focal.cli.predict import run

if __name__ == '__main__':
    run()
