"""The memory autograd keeps for backward: the bytes of the tensors a forward pass saves, counted through
`torch.autograd.graph.saved_tensors_hooks` over distinct storages (a tensor saved twice, or two views of one
buffer, count once), parameters left out. This does not depend on the device or on the allocator: it is what
decides how large a batch fits on an accelerator, measured on any machine."""
from typing import Callable, Iterable, Tuple

import torch


def saved_for_backward(forward: Callable[[], torch.Tensor],
                       exclude: Iterable[torch.Tensor] = ()) -> Tuple[torch.Tensor, int]:
    """(forward()'s output, bytes of the distinct storages autograd saved for its backward), the storages
    of `exclude` (the model's parameters) not counted."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    saved = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded and t.device.type != 'meta':
            saved[(t.device, storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return out, sum(saved.values())
