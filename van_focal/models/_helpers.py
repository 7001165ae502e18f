"""Checkpoint plumbing shared by the model families."""
from typing import Any, Callable, Dict

import torch.nn as nn
from timm.models import build_model_with_cfg, resolve_pretrained_cfg

from ..checkpoint import checkpoint_loading, weights_source

# Keys under which the official repos and timm's train.py keep the weights, in order of preference.
_STATE_DICT_KEYS = ('state_dict', 'model')


def unwrap_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """Return the weights of a raw checkpoint dict (official `state_dict` / `model` entry) or the dict itself."""
    for key in _STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def remap_keys_on_load(model: nn.Module, filter_fn: Callable[[Dict[str, Any], nn.Module], Dict[str, Any]]) -> None:
    """Make `model.load_state_dict` (and so `timm.models.load_checkpoint`) accept official key names.

    `filter_fn` must leave a state dict already in this model's layout unchanged.
    """
    def hook(module, state_dict, prefix, *args):
        own = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
        state_dict.update({prefix + k: v for k, v in filter_fn(own, module).items()})

    model.register_load_state_dict_pre_hook(hook)


def build_model(model_cls, variant: str, pretrained: bool, **kwargs) -> nn.Module:
    """`build_model_with_cfg`, with pretrained-weight failures reported as one CheckpointError naming the file."""
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'), pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    with checkpoint_loading(weights_source(cfg.to_dict()), variant):
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
