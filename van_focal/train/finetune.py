"""Fine-tuning from a local weights file, timm's `--pretrained-path`.

The file is loaded as the model's pretrained weights (timm's `pretrained_cfg_overlay=dict(file=PATH)`),
so every layout the model's checkpoint filter accepts works: official VAN / Focal Transformer
checkpoints, timm-layout state dicts and train.py checkpoints. The classifier is kept when its
class count is the model's, and re-initialised (with a log line) when it differs.
"""
import logging
from typing import Any, Dict, Optional

import torch
from timm.models import get_pretrained_cfg

from ..core.checkpoint import checkpoint_loading, read_checkpoint_file
from ..models._helpers import unwrap_state_dict

_logger = logging.getLogger(__name__)


def classifier_classes(state_dict: Dict[str, Any], classifier: str) -> Optional[int]:
    """Rows of the classifier weight in `state_dict`, in timm's layout (`head.fc.weight`) or the official
    one (`head.weight`), with or without DataParallel's `module.` prefix; None without a classifier."""
    parent = classifier.rsplit('.', 1)[0]
    for name in (classifier, parent):
        for prefix in ('', 'module.'):
            weight = state_dict.get(f'{prefix}{name}.weight')
            if isinstance(weight, torch.Tensor) and weight.ndim >= 2:
                return int(weight.shape[0])
    return None


def pretrained_path_kwargs(model_name: str, path: str, num_classes: Optional[int]) -> Dict[str, Any]:
    """`create_model` kwargs that load `path` as `model_name`'s pretrained weights, adapting the head."""
    with checkpoint_loading(path, model_name):
        checkpoint = read_checkpoint_file(path)
    cfg = get_pretrained_cfg(model_name)
    classifier = cfg.classifier if cfg is not None and isinstance(cfg.classifier, str) else 'head.fc'
    file_classes = classifier_classes(unwrap_state_dict(checkpoint), classifier)
    if file_classes is None:
        _logger.info(f'{path} has no classifier ({classifier}): the head is initialised anew.')
    elif num_classes is not None and num_classes != file_classes:
        _logger.info(f'{path} has a {file_classes}-class head, the model {num_classes} classes: '
                     'the head is re-initialised; all other weights come from the file.')
    # The class count in the overlay is the file's: timm drops the file's head exactly when it differs.
    return dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=file_classes or -1))


def init_head(model, scale=None, bias=None) -> None:
    """timm's --head-init-scale / --head-init-bias: scale the classifier's initial weights, set its bias."""
    head = model.get_classifier()
    with torch.no_grad():
        if scale is not None:
            head.weight.mul_(scale)
            head.bias.mul_(scale)
        if bias is not None:
            head.bias.fill_(bias)
