"""VAN and Focal Transformer backbones for timm: `import van_focal`, then `timm.create_model('van_b2')`."""
__version__ = '0.1.0'

from . import device  # noqa: F401  (first, before torch: see device._keep_torch_npu_from_breaking_torch)
from . import models  # noqa: F401  (registers the models with timm)
from .augment import patch_timm_posterize
from .checkpoint import CheckpointError, allow_training_configs, load_checkpoint  # noqa: F401

allow_training_configs()
patch_timm_posterize()
