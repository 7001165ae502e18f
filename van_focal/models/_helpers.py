"""Checkpoint plumbing shared by the model families."""
import contextlib
import logging
import os
import socket
import urllib.error
import urllib.parse
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, resolve_pretrained_cfg
from timm.models._hub import check_cached_file

from ..core.checkpoint import checkpoint_loading, weights_source
from ..core.errors import CheckpointError

_logger = logging.getLogger(__name__)

# Published addresses known to serve nothing any more, with where that is reported.
GONE = {
    'https://projects4jw.blob.core.windows.net/model/focal-transformer/':
        'the address is gone, it no longer serves the files (microsoft/Focal-Transformer issues #8, #20)',
}

# Addresses that only a person can download from (a sign-in page, a share code): the tag's file name is the
# URL's fragment, which `pretrained=True` looks for in torch.hub's cache (where timm keeps what it downloads).
MANUAL = {
    'https://drive.google.com/': 'published on Google Drive and Baidu (the tag\'s notes), which timm cannot download',
}

# Keys under which the official repos and timm's train.py keep the weights, in order of preference.
_STATE_DICT_KEYS = ('state_dict', 'model')


def unwrap_state_dict(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """Return the weights of a raw checkpoint dict (official `state_dict` / `model` entry) or the dict itself."""
    for key in _STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def use_tanh_gelu(model: nn.Module, why: str) -> int:
    """Switch the model's GELUs to the tanh approximation, in place (as `act_layer='gelu_tanh'` builds them):
    MindSpore's nn.GELU is that approximation, so weights trained with MindSpore want it. Returns how many changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.GELU) and module.approximate != 'tanh':
            module.approximate = 'tanh'
            changed += 1
    if changed:
        _logger.info(f"{why}: GELU set to its tanh approximation, as these weights were trained with "
                     "(build with act_layer='gelu_tanh' to have it from the start).")
    return changed


def remap_keys_on_load(model: nn.Module, filter_fn: Callable[[Dict[str, Any], nn.Module], Dict[str, Any]]) -> None:
    """Make `model.load_state_dict` (and so `timm.models.load_checkpoint`) accept official key names.

    `filter_fn` must leave a state dict already in this model's layout unchanged.
    """
    def hook(module, state_dict, prefix, *args):
        own = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
        state_dict.update({prefix + k: v for k, v in filter_fn(own, module).items()})

    model.register_load_state_dict_pre_hook(hook)


def _unreachable(error: BaseException) -> Optional[str]:
    """Why a download failed, if it failed for want of a network or of the file at its address."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        name = type(error).__name__
        if name in ('LocalEntryNotFoundError', 'OfflineModeIsEnabled'):
            return 'it is not in the local hub cache and the hub is unreachable (offline, HF_HUB_OFFLINE=1 or no network)'
        if isinstance(error, urllib.error.HTTPError) or name in (
                'RemoteEntryNotFoundError', 'RepositoryNotFoundError', 'RevisionNotFoundError', 'EntryNotFoundError',
                'GatedRepoError', 'HfHubHTTPError'):
            code = getattr(error, 'code', None) or getattr(getattr(error, 'response', None), 'status_code', None)
            gone = code in (404, 410) or 'NotFound' in name
            return f"the address {'is gone' if gone else 'refused it'}{f' (HTTP {code})' if code else ''}"
        if isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout, socket.gaierror)) \
                or name in ('ConnectError', 'ConnectTimeout'):
            return 'the address is unreachable (no network?)'
        error = error.__cause__ or error.__context__
    return None


def _download_error(cfg: Dict[str, Any], variant: str, why: str) -> CheckpointError:
    if cfg.get('hf_hub_id'):
        filename = cfg.get('hf_hub_filename') or 'pytorch_model.bin'
        address = f"https://huggingface.co/{cfg['hf_hub_id']}"
    else:
        filename = os.path.basename(str(cfg.get('url', ''))) or 'the weights file'
        address = str(cfg.get('url'))
    return CheckpointError(
        f"{variant}: cannot download its pretrained weights {filename} from {address}: {why}. Load a local copy "
        f"with pretrained_cfg_overlay=dict(file='PATH/{filename}') (scripts: --initial-checkpoint / --checkpoint PATH).")


def _manual_download(cfg: Dict[str, Any], variant: str, why: str) -> str:
    """The copy of a manually downloaded file in torch.hub's cache, or a CheckpointError saying where to get it."""
    url = str(cfg['url'])
    filename = urllib.parse.urlparse(url).fragment
    cached = os.path.join(torch.hub.get_dir(), 'checkpoints', filename)
    if filename and os.path.isfile(cached):
        return cached
    published = (cfg.get('notes') or ('',))[0]
    raise CheckpointError(
        f"{variant}: {filename} ({published}) is {why}: {url.split('#')[0]} . Download it, then pass "
        f"pretrained_cfg_overlay=dict(file='PATH/{filename}') (scripts: --initial-checkpoint / --checkpoint PATH), "
        f"or put it in {os.path.dirname(cached)}/ for pretrained=True.")


def build_model(model_cls, variant: str, pretrained: bool, device=None, dtype=None, **kwargs) -> nn.Module:
    """`build_model_with_cfg`, with pretrained-weight failures reported as one CheckpointError naming the file;
    a download from an unreachable or gone address says so, and how to load a local copy, without retrying.

    `device` and `dtype` are timm's `create_model(..., device=, dtype=)`: the model's tensors are made on that
    device (`'meta'`: none allocated, for `to_empty()` and a state dict later) and in that floating dtype.
    """
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = _build_model(model_cls, variant, pretrained, **kwargs)
    return model if dtype is None else model.to(dtype=dtype)


def _build_model(model_cls, variant: str, pretrained: bool, **kwargs) -> nn.Module:
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    cfg = resolve_pretrained_cfg(
        variant, pretrained_cfg=kwargs.get('pretrained_cfg'), pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    cfg = cfg.to_dict()
    if not cfg.get('file') and not cfg.get('state_dict'):
        manual = next((why for prefix, why in MANUAL.items() if str(cfg.get('url') or '').startswith(prefix)), None)
        if manual and not cfg.get('hf_hub_id'):
            cfg['file'] = _manual_download(cfg, variant, manual)
            kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=cfg['file'])
        gone = next((why for prefix, why in GONE.items() if str(cfg.get('url') or '').startswith(prefix)), None)
        if gone and not cfg.get('hf_hub_id') and not check_cached_file(cfg['url'], check_hash=False):
            raise _download_error(cfg, variant, gone)
    with checkpoint_loading(weights_source(cfg), variant):
        try:
            return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
        except Exception as e:
            why = None if cfg.get('file') else _unreachable(e)
            if why is None:
                raise
            raise _download_error(cfg, variant, why) from None
