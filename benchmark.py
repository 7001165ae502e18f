#!/usr/bin/env python3
"""Inference and training-step throughput of VAN / Focal Transformer (or any timm model).

    python benchmark.py --model 'van_b*' --bench both
    python benchmark.py --model 'focal_*,focalv2_*' --bench infer --device cuda --amp --amp-dtype bfloat16 --channels-last
    python benchmark.py --model van_b2 --fuse --results-file bench.csv
    python benchmark.py --model 'van_b*,focal_*,focalv2_*' --bench infer --onnx --device cpu --results-file onnx.csv
    python benchmark.py --model van_b0,focal_tiny_patch4_window7_224 --bench both --channels-last --roofline

For each model: parameters, GMACs per image (torch.utils.flop_counter), and per benchmark the median
img/s and batch latency over --repeats timed runs of --iters steps each, after --warmup steps, the
achieved GFLOP/s (training counted as 3x the forward) against the device's dense matmul rate,
the routes the CPU's measurement picked (van_focal.models._routes), and the peak memory (the allocator's
peak on an accelerator; the process's peak resident memory on the CPU), and for training the activation
memory, `activation_mib_per_image`: the bytes autograd saves for backward per image (distinct storages,
parameters excluded), the same on every device. Each model is measured in a fresh process, so that its peak memory is its own whatever
ran before it (freed memory that the allocator keeps would otherwise count for the next model).
With --onnx, inference is also exported to ONNX as `python -m van_focal.export` does and timed in
onnxruntime (CPU) on the same input, float and INT8 (static QDQ as its `--int8` makes it, calibrated on
random inputs: a speed figure), at --batch-size and at batch 1 (eager too), with the CPU named and whether
it has 8-bit dot products (VNNI). With --roofline, the step's FLOP-counted kernels (convs, matmuls,
attention) are timed alone at the model's own shapes, and its GFLOP/s reported as a percentage of theirs
(van_focal/roofline.py).
"""
import van_focal.core.device  # noqa: F401,I001  (before torch: an installed torch_npu without CANN must not break it)
import argparse
import concurrent.futures
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import van_focal  # noqa: F401  (registers the models)
from van_focal.core import device as devices
from van_focal.core.saved_memory import saved_for_backward
from van_focal.cli import roofline
from van_focal.models import _routes as routes
from van_focal.core.errors import UsageError
from van_focal.cli.args import parse_args, run_main, write_results
from van_focal.cli import deploy
from van_focal.cli.export import export, onnx_session
from van_focal.core.progress import format_duration

_logger = logging.getLogger('benchmark')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('-c', '--config', default='', metavar='FILE', help='YAML file of flag defaults')
    parser.add_argument('--model', default='van_b0', help="names or wildcards, comma-separated: 'van_b*', 'focal_*,focalv2_*'")
    parser.add_argument('--bench', default='both', choices=['infer', 'train', 'both'])
    parser.add_argument('-b', '--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224, metavar='N')
    parser.add_argument('--num-classes', type=int, default=1000)
    parser.add_argument('--device', default=None, help='cuda, npu or cpu (default: the accelerator present)')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--amp-dtype', default=None, choices=list(devices.AMP_DTYPES),
                        help="default: bfloat16 where the device has it, else float16")
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--torchcompile', nargs='?', const='inductor', default=None, metavar='BACKEND')
    parser.add_argument('--fuse', action='store_true', help='inference on the fused model (timm reparameterize)')
    parser.add_argument('--onnx', action='store_true', help='also export inference to ONNX and time it in onnxruntime (CPU)')
    parser.add_argument('--roofline', action='store_true',
                        help="also time the model's FLOP-counted kernels (convs, matmuls, attention) alone at its own "
                             'shapes, and report its GFLOP/s as a percentage of their rate')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps first')
    parser.add_argument('--iters', type=int, default=3, help='steps per timed run')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs; the median is reported')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s choice)')
    parser.add_argument('--results-file', default='', help='.csv or .json')
    return parser


def model_names(patterns: str) -> List[str]:
    """Models matching comma-separated names or wildcards ('focal*' also matches timm's own focalnet_*;
    'focal_*,focalv2_*' are the nine Focal Transformers)."""
    names = []
    for pattern in patterns.split(','):
        found = timm.list_models(pattern) if any(c in pattern for c in '*?[') else [pattern]
        if not found or not all(timm.is_model(n) for n in found):
            raise UsageError(f'--model {pattern}: no such model; see timm.list_models().')
        names += [n for n in found if n not in names]
    return names


def gmacs_per_image(model: nn.Module, img_size: int) -> float:
    """Multiply-accumulates of one forward pass on one image (meta device: nothing is computed)."""
    with torch.device('meta'):
        meta_model = timm.create_model(model.default_cfg['architecture'], num_classes=model.num_classes).eval()
        with FlopCounterMode(display=False) as counter:
            meta_model(torch.empty(1, 3, img_size, img_size))
    return counter.get_total_flops() / 2 / 1e9


def time_steps(step: Callable[[], Any], device: torch.device, args, what: str = '') -> Dict[str, float]:
    """Median img/s and batch latency (ms) of `step` over args.repeats runs of args.iters steps. With `what`,
    logs how long the warm-up took and, after the first timed run, how long the others will."""
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    devices.synchronize(device)
    if what:
        _logger.info(f'  {what}: {args.warmup} warm-up steps took {format_duration(time.perf_counter() - start)}')
    seconds = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.iters):
            step()
        devices.synchronize(device)
        seconds.append((time.perf_counter() - start) / args.iters)
        if what and repeat == 0 and args.repeats > 1:
            _logger.info(f'  {what}: timed run 1 of {args.repeats} took {format_duration(seconds[0] * args.iters)}, '
                         f'about {format_duration(seconds[0] * args.iters * (args.repeats - 1))} for the rest')
    median = statistics.median(seconds)
    return dict(img_per_sec=round(args.batch_size / median, 2), latency_ms=round(1000 * median, 2))


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """The device's measured dense matmul rate (n x n), the yardstick for the models' achieved GFLOP/s."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_steps(lambda: a @ b, device, argparse.Namespace(warmup=2, iters=3, repeats=5, batch_size=1))
    return round(2 * n ** 3 * seconds['img_per_sec'] / 1e9, 1)


def peak_memory_mb(device: torch.device) -> Optional[float]:
    peak = devices.max_memory_allocated(device)
    return None if peak is None else round(peak / 2 ** 20, 1)


def activation_mib_per_image(model: nn.Module, x: torch.Tensor, loss: Callable[[], torch.Tensor], autocast) -> float:
    """MiB autograd saves for the backward of one training step, per image (distinct storages, parameters
    excluded: `van_focal.core.saved_memory`); device-independent, unlike the allocator's peak."""
    with autocast():
        out, saved = saved_for_backward(loss, model.parameters())
    out.backward()
    model.zero_grad(set_to_none=True)
    return round(saved / x.shape[0] / 2 ** 20, 1)


def bench_model(name: str, mode: str, device: torch.device, args) -> Dict[str, Any]:
    model = timm.create_model(name, num_classes=args.num_classes).to(device)
    result = dict(model=name, bench=mode, device=str(device), batch_size=args.batch_size, img_size=args.img_size,
                  amp=args.amp and args.amp_dtype, channels_last=args.channels_last, fuse=args.fuse and mode == 'infer',
                  compile=args.torchcompile or '', param_count=sum(p.numel() for p in model.parameters()),
                  gmacs=round(gmacs_per_image(model, args.img_size), 3))
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device).contiguous(
        memory_format=memory_format)
    autocast = devices.autocast(device, args.amp, devices.amp_dtype(args.amp_dtype))
    devices.reset_peak_memory(device)

    if mode == 'infer':
        model.eval()
        if args.fuse:
            model = timm.utils.reparameterize_model(model)
        run = torch.compile(model, backend=args.torchcompile) if args.torchcompile else model

        def step():
            with torch.inference_mode(), autocast():
                run(x)
    else:
        model.train()
        run = torch.compile(model, backend=args.torchcompile) if args.torchcompile else model
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
        target = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
        loss_fn = nn.CrossEntropyLoss()

        def step():
            with autocast():
                loss = loss_fn(run(x), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    routes.clear()  # this mode's own picks (a fresh process per model; only the modes share it)
    result.update(time_steps(step, device, args, what=f'{name} {mode}'))
    result['routes'] = routes.describe_chosen()
    result['gflops_per_sec'] = round(result['img_per_sec'] * result['gmacs'] * 2 * (3 if mode == 'train' else 1), 1)
    result['peak_memory_mb'] = peak_memory_mb(device)  # before the ONNX export and session add their own
    if mode == 'train' and not args.torchcompile:
        result['activation_mib_per_image'] = activation_mib_per_image(model, x, lambda: loss_fn(model(x), target), autocast)
    if args.roofline:
        _logger.info(f'  {name} {mode}: --roofline: timing its kernels alone')
        result.update(roofline.measure(step, device, result['latency_ms'] / 1e3, args.warmup, args.repeats))
    if args.onnx and mode == 'infer':
        _logger.info(f'  {name} {mode}: --onnx: exporting, checking and timing in onnxruntime')
        result.update(bench_onnx(model, x, args))
    return result


def _bench_in_this_process(name: str, modes: List[str], args) -> List[Dict[str, Any]]:
    logging.basicConfig(level=logging.INFO, format='%(message)s')  # a spawned process starts unconfigured
    if args.threads:
        torch.set_num_threads(args.threads)
    device = devices.init_device(args)  # in the child too: current device, fast math, --amp-dtype default
    return [bench_model(name, mode, device, args) for mode in modes]


def bench_isolated(name: str, modes: List[str], args) -> List[Dict[str, Any]]:
    """`bench_model` for each mode, in a fresh process (spawned: nothing of this one is inherited)."""
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_bench_in_this_process, name, modes, args).result()


def bench_onnx(model: nn.Module, x: torch.Tensor, args) -> Dict[str, Any]:
    """Export `model` (dynamo exporter, dynamic batch, and dynamic size where the model allows it), check it
    in onnxruntime against PyTorch, and time onnxruntime on `x` with as many threads as torch uses; then its
    INT8 version (static QDQ as `python -m van_focal.export --int8` makes it, calibrated on random inputs:
    a speed figure, not an accuracy one), and float and INT8 at batch 1 beside eager at batch 1."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'model.onnx')
        size = tuple(x.shape[2:])
        try:
            differences = export(model, path, size, dynamic=True)
            dynamic = 'batch, height, width'
        except UsageError:  # Focal: one file per input size
            differences = export(model, path, size, dynamic=False)
            dynamic = 'batch'
        int8_path = deploy.int8_path(path)
        calibration = [torch.randn(x.shape[0], *x.shape[1:]).numpy() for _ in range(4)]
        deploy.quantize(path, int8_path, 'static', calibration)
        result = dict(onnx_exporter='torch.onnx dynamo', onnx_dynamic=dynamic, onnx_mb=round(os.path.getsize(path) / 2 ** 20, 1),
                      onnx_max_rel_diff=float(f'{max(differences.values()):.2e}'), onnx_checked=' '.join(differences),
                      onnx_int8_mb=round(os.path.getsize(int8_path) / 2 ** 20, 1), cpu=devices.cpu_name(),
                      vnni=deploy.cpu_has_vnni())
        cpu, batch_one = torch.device('cpu'), argparse.Namespace(**dict(vars(args), batch_size=1))
        for prefix, file in (('onnx', path), ('onnx_int8', int8_path)):
            session = onnx_session(file, torch.get_num_threads())
            name = session.get_inputs()[0].name
            for suffix, inputs, settings in (('', x, args), ('_b1', x[:1], batch_one)):
                feed = {name: inputs.contiguous().numpy()}
                timing = time_steps(lambda: session.run(None, feed), cpu, settings)
                result[f'{prefix}{suffix}_img_per_sec'] = timing['img_per_sec']
                result[f'{prefix}{suffix}_latency_ms'] = timing['latency_ms']
    with torch.inference_mode():
        result['eager_b1_img_per_sec'] = time_steps(lambda: model(x[:1]), cpu, batch_one)['img_per_sec']
    return result




def main():
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    args = parse_args(build_parser())
    if args.threads:
        torch.set_num_threads(args.threads)
    device = devices.init_device(args)
    if args.onnx and (device.type != 'cpu' or args.amp or args.torchcompile or args.bench == 'train'):
        raise UsageError('--onnx times onnxruntime inference on the CPU in float32: use it with --device cpu and '
                         '--bench infer or both, without --amp / --torchcompile.')
    if args.roofline and args.torchcompile:
        raise UsageError('--roofline replays the eager aten calls of a step, which a compiled model does not make: '
                         'use it without --torchcompile.')
    modes = ['infer', 'train'] if args.bench == 'both' else [args.bench]
    matmul = matmul_gflops(device, devices.amp_dtype(args.amp_dtype) if args.amp else torch.float32)
    print(f'{device}: dense matmul {matmul:.0f} GFLOP/s')
    if args.onnx:
        print(f'CPU: {devices.cpu_name()}, AVX-512 VNNI / AVX-VNNI (8-bit dot products): '
              f'{"yes" if deploy.cpu_has_vnni() else "no"}')
    rows = []
    names = model_names(args.model)
    start = time.time()
    for index, name in enumerate(names):
        elapsed = time.time() - start
        left = f', about {format_duration(elapsed / index * (len(names) - index))} left' if index else ''
        _logger.info(f'[{index + 1}/{len(names)}] {name}: {" and ".join(modes)}'
                     + (f' ({format_duration(elapsed)} so far{left})' if index else ''))
        for row in bench_isolated(name, modes, args):
            mode = row['bench']
            row['matmul_gflops_per_sec'] = matmul
            rows.append(row)
            print(f"{name:<44} {mode:<5} {row['img_per_sec']:>9.2f} img/s  {row['latency_ms']:>9.1f} ms/batch  "
                  f"{row['param_count'] / 1e6:>6.2f} M params  {row['gmacs']:>6.2f} GMACs  "
                  f"{row['gflops_per_sec']:>8.1f} GFLOP/s ({100 * row['gflops_per_sec'] / matmul:.0f} % of matmul)  peak {row['peak_memory_mb']} MB", flush=True)
            if 'activation_mib_per_image' in row:
                print(f"{'':<44} saved for backward {row['activation_mib_per_image']} MiB/image", flush=True)
            if row['routes']:
                print(f"{'':<44} routes picked: {row['routes']}", flush=True)
            if 'onnx_img_per_sec' in row:
                print(f"{'':<44} onnx  {row['onnx_img_per_sec']:>9.2f} img/s  {row['onnx_latency_ms']:>9.1f} ms/batch  "
                      f"{row['onnx_mb']} MB, dynamic {row['onnx_dynamic']}, max relative difference "
                      f"{row['onnx_max_rel_diff']:.1e} ({row['onnx_checked']})", flush=True)
                print(f"{'':<44} int8  {row['onnx_int8_img_per_sec']:>9.2f} img/s  {row['onnx_int8_latency_ms']:>9.1f} ms/batch  "
                      f"{row['onnx_int8_mb']} MB, static QDQ calibrated on random inputs (speed only)", flush=True)
                print(f"{'':<44} batch 1: eager {row['eager_b1_img_per_sec']:.2f}, onnx {row['onnx_b1_img_per_sec']:.2f}, "
                      f"int8 {row['onnx_int8_b1_img_per_sec']:.2f} img/s", flush=True)
            if 'roofline_pct' in row:
                print(roofline.describe(row), flush=True)
    if args.results_file:
        write_results(args.results_file, rows)


if __name__ == '__main__':
    run_main(main)
