"""VAN and Focal Transformer backbones for timm: `import van_focal`, then `timm.create_model('van_b2')`."""
from .core import device  # noqa: F401,I001  (first, before torch: see device._keep_torch_npu_from_breaking_torch)
from .core.version import __version__  # noqa: F401
from . import models  # noqa: F401  (registers the models with timm)
from .core.checkpoint import allow_training_configs, load_checkpoint  # noqa: F401
from .core.errors import CheckpointError  # noqa: F401
from .core.foreign_checkpoints import read_foreign_files_in_timm
from .train.augment import patch_timm_posterize

allow_training_configs()
read_foreign_files_in_timm()  # timm's checkpoint reader also reads PaddlePaddle .pdparams and MindSpore .ckpt
patch_timm_posterize()
