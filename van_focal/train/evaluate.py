"""The evaluation loop shared by train.py (each epoch) and validate.py."""
from collections import OrderedDict
from typing import Callable, ContextManager, Iterable, Optional

import torch
import torch.nn as nn
from timm import utils


def evaluate(model: nn.Module, batches: Iterable, device: torch.device, autocast: Callable[[], ContextManager],
             channels_last: bool = False, move_to_device: bool = False, world_size: int = 1,
             on_batch: Optional[Callable[[float, float], None]] = None) -> 'OrderedDict[str, float]':
    """Cross-entropy loss, top-1 and top-5 (%) of `model` over `batches`, averaged over all processes when
    `world_size` > 1. `on_batch(top1, top5)` sees the running averages (for a progress bar)."""
    loss_fn = nn.CrossEntropyLoss()
    losses, top1, top5 = utils.AverageMeter(), utils.AverageMeter(), utils.AverageMeter()
    model.eval()
    with torch.inference_mode():
        for input, target in batches:
            if move_to_device:
                input, target = input.to(device), target.to(device)
            if channels_last:
                input = input.contiguous(memory_format=torch.channels_last)
            with autocast():
                output = model(input)
            loss = loss_fn(output.float(), target)
            acc1, acc5 = utils.accuracy(output, target, topk=(1, min(5, output.shape[-1])))
            if world_size > 1:
                loss, acc1, acc5 = (utils.reduce_tensor(t, world_size) for t in (loss, acc1, acc5))
            for meter, value in ((losses, loss), (top1, acc1), (top5, acc5)):
                meter.update(value.item(), input.shape[0])
            if on_batch is not None:
                on_batch(top1.avg, top5.avg)
    # Rounded: float32 accuracies averaged in float64 print as 20.000000127156575.
    return OrderedDict([('loss', round(losses.avg, 6)), ('top1', round(top1.avg, 4)), ('top5', round(top5.avg, 4)),
                        ('count', top1.count)])
