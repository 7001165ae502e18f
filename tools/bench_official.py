#!/usr/bin/env python3
"""Our models against the official VAN / Focal Transformer code, same weights, timed side by side.

    python tools/bench_official.py --official-van PATH/VAN-Classification \
        --official-focal PATH/Focal-Transformer --models van_b0,van_b2,focal_t,focalv2_t --threads 2

The official repositories are not part of van_focal: clone them yourself. For each model both
implementations get the same weights, the largest relative logit difference is printed, then
inference (ours plain and fused) and an SGD training step are timed in interleaved rounds (and the
activation memory of a training step counted, bytes saved for backward per image), each
implementation in NCHW and in channels_last, and the best median of ours is compared with the best
median of the official code. Also printed: the CPU, the routes our code's measurement picked
(van_focal.models._routes), and at the end a Markdown table of the ratios.
"""
import argparse
import importlib
import os
import statistics
import subprocess
import sys
import time
from unittest import mock

import timm
import torch
import torch.nn as nn

import van_focal  # noqa: F401
from van_focal.core import device as devices
from van_focal.core.saved_memory import saved_for_backward
from van_focal.models import _routes as routes
from van_focal.models import focal_transformer, van

FOCAL_TINY = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, focal_pool='fc',
                  focal_stages=[0, 1, 2, 3], focal_levels=[2, 2, 2, 2], focal_windows=[7, 5, 3, 1],
                  expand_sizes=[3, 3, 3, 3], expand_layer='all', drop_path_rate=0.)


def import_official(folder: str, module: str):
    """Import an official module without letting it register its models in timm's registry."""
    sys.path.insert(0, folder)
    with mock.patch('timm.models.registry.register_model', lambda fn: fn):
        import timm.data.transforms as transforms
        transforms._pil_interp = getattr(transforms, '_pil_interp', None)  # focal_transformer_v2 imports it
        return importlib.import_module(module)


def build_pair(name: str, args):
    """(official model, our model) of one architecture with the same weights."""
    if name.startswith('van_'):
        official = getattr(import_official(f'{args.official_van}/models', 'van'), name)(drop_path_rate=0.)
        ours = getattr(van, name)(drop_path_rate=0.)
    elif name == 'focal_t':
        module = import_official(f'{args.official_focal}/classification', 'focal_transformer')
        official = module.FocalTransformer(img_size=224, use_conv_embed=False, **FOCAL_TINY)
        ours = focal_transformer.focal_tiny_patch4_window7_224()
    elif name == 'focalv2_t':
        module = import_official(f'{args.official_focal}/classification', 'focal_transformer_v2')
        official = module.FocalTransformer(img_size=224, use_conv_embed=True, focal_topK=128, **FOCAL_TINY)
        ours = focal_transformer.focalv2_tiny_useconv_patch4_window7_224()
    else:
        raise SystemExit(f'unknown --models entry {name}: use van_b0..van_b6, focal_t, focalv2_t')
    ours.load_state_dict(official.state_dict())
    return official, ours


def infer_step(model, x):
    def step():
        with torch.inference_mode():
            model(x)
    return step


def train_step(model, x):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    target = torch.zeros(x.shape[0], dtype=torch.long)

    def step():
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def interleaved(steps: dict, batch: int, iters: int, repeats: int) -> dict:
    """Median img/s of each step function, timed in alternating rounds so that machine noise hits all alike."""
    for step in steps.values():
        step()
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            for _ in range(iters):
                step()
            times[key].append(batch * iters / (time.perf_counter() - start))
    return {k: statistics.median(v) for k, v in times.items()}


def activation_mib_per_image(model: nn.Module, x: torch.Tensor) -> float:
    """MiB autograd saves for the backward of one training step, per image (`van_focal.core.saved_memory`)."""
    model.train()
    target = torch.zeros(x.shape[0], dtype=torch.long)
    loss, saved = saved_for_backward(lambda: nn.functional.cross_entropy(model(x), target), model.parameters())
    loss.backward()
    model.zero_grad(set_to_none=True)
    return round(saved / x.shape[0] / 2 ** 20, 1)


def commit() -> str:
    """The short hash of the checkout the tools run from ('' outside git), for the rows they write."""
    try:
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        return ''


def setup_run(args) -> tuple:
    """What a timing run starts with (here and in bench_peers.py): `--threads` applied, the seed set, then the
    (--batch-size, 3, 224, 224) input and the CPU's name."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.randn(args.batch_size, 3, 224, 224), devices.cpu_name()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official-van', default='')
    parser.add_argument('--official-focal', default='')
    parser.add_argument('--models', default='van_b0,van_b2,focal_t,focalv2_t')
    parser.add_argument('--bench', default='both', choices=['infer', 'train', 'both'])
    parser.add_argument('-b', '--batch-size', type=int, default=8)
    parser.add_argument('--iters', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--memory-amp-dtype', default='', choices=['', 'bfloat16'],
                        help='count the activation memory under CPU autocast in this dtype (timing stays float32)')
    args = parser.parse_args()
    x, cpu = setup_run(args)
    amp = torch.autocast('cpu', dtype=torch.bfloat16, enabled=bool(args.memory_amp_dtype))
    print(f'{cpu}; torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, batch '
          f'{args.batch_size}, 224x224, float32, median of {args.repeats} interleaved rounds')
    table = []
    channels_last = x.contiguous(memory_format=torch.channels_last)
    for name in args.models.split(','):
        routes.clear()
        official, ours = build_pair(name, args)
        official.eval(), ours.eval()
        with torch.inference_mode():
            reference = official(x)
            diff = float((ours(x) - reference).abs().max() / reference.abs().max())
        line = f'{name}: max relative logit difference {diff:.1e}'
        # Each implementation in both memory layouts; ratios compare the best of each.
        variants = {'official': (official, x), 'official channels_last': (official, channels_last),
                    'ours': (ours, x), 'ours channels_last': (ours, channels_last)}
        if args.bench in ('infer', 'both'):
            steps = {k: infer_step(m, inp) for k, (m, inp) in variants.items()}
            if name.startswith('van_'):
                fused = timm.utils.reparameterize_model(ours)
                with torch.inference_mode():
                    line += f' (fused {float((fused(x) - reference).abs().max() / reference.abs().max()):.1e})'
                steps['ours fused channels_last'] = infer_step(fused, channels_last)
            speed = interleaved(steps, args.batch_size, args.iters, args.repeats)
            line += '\n  inference: ' + report(speed)
            table.append(table_row(name, 'inference', speed, cpu, diff))
        if args.bench in ('train', 'both'):
            with amp:
                memory = activation_mib_per_image(official, x), activation_mib_per_image(ours, x)
            line += (f'\n  activation memory{" (" + args.memory_amp_dtype + " autocast)" if args.memory_amp_dtype else ""}: '
                     f'official {memory[0]} MiB/image, ours {memory[1]} MiB/image, {memory[1] / memory[0]:.2f}x')
            official.train(), ours.train()
            steps = {k: train_step(m, inp) for k, (m, inp) in variants.items()}
            speed = interleaved(steps, args.batch_size, 1, args.repeats)
            line += '\n  training step: ' + report(speed)
            table.append(table_row(name, 'training step', speed, cpu, diff))
        print(line + f'\n  routes picked: {routes.describe_chosen() or "none"}', flush=True)
    print('\n| model | | CPU | official img/s | ours img/s | ratio | max. relative logit difference |\n'
          '| --- | --- | --- | ---: | ---: | ---: | ---: |\n' + '\n'.join(table))


def best(speed: dict) -> dict:
    return {who: max(v for k, v in speed.items() if k.startswith(who)) for who in ('official', 'ours')}


def report(speed: dict) -> str:
    """img/s of every variant, then the best of ours over the best official."""
    top = best(speed)
    return (', '.join(f'{k} {v:.2f}' for k, v in speed.items()) + f' img/s; best ours / best official '
            f'{top["ours"] / top["official"]:.2f}x')


def table_row(name: str, mode: str, speed: dict, cpu: str, diff: float) -> str:
    top = best(speed)
    ours = max(speed, key=lambda k: speed[k] if k.startswith('ours') else -1)
    return (f'| {name} | {mode} ({ours[len("ours "):] or "NCHW"}) | {cpu} | {top["official"]:.2f} | '
            f'{top["ours"]:.2f} | {top["ours"] / top["official"]:.2f}x | {diff:.1e} |')


if __name__ == '__main__':
    main()
