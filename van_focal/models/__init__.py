"""Importing this package registers every model with timm."""
from .van import *  # noqa: F401,F403
from .focal_transformer import *  # noqa: F401,F403
