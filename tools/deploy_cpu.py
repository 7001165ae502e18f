#!/usr/bin/env python3
"""Measure a trained checkpoint for docs/deploy_cpu.md: PyTorch eager, onnxruntime float and onnxruntime INT8,
top-1 on a validation folder and img/s at batch 1 and 8; rows appended to results/deploy_cpu.csv.

    python tools/deploy_cpu.py --checkpoint output/demo/van_b0-shapes/model_best.pth.tar --data demo_data/shapes \\
        --model van_b0 --reparam --results-file results/deploy_cpu.csv [--profile]

The files are made as `python -m van_focal.export ... --int8 --calibration-data DATA/train --val-data DATA/val`
makes them (the command is printed). The three runtimes are timed in turn, round after round, with the same
thread count, and the median of the rounds is reported; `--profile` adds onnxruntime's per-operator profile
(share of kernel time by operator type) of the float and INT8 files.
"""
import argparse
import csv
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_official import commit  # noqa: E402  (the tools' one lookup of the checkout's hash)
from van_focal.cli import deploy, export  # noqa: E402
from van_focal.core.device import cpu_name  # noqa: E402
from van_focal.train import run_info  # noqa: E402

COLUMNS = ['date', 'cpu', 'commit', 'command', 'model', 'img_size', 'runtime', 'precision', 'threads',
           'img_per_sec_b1', 'img_per_sec_b8', 'top1', 'agreement', 'max_logit_diff', 'mean_logit_diff', 'vnni',
           'load_avg']
PROFILE_COLUMNS = ['date', 'cpu', 'commit', 'model', 'img_size', 'runtime', 'precision', 'threads', 'batch', 'op',
                   'pct_of_kernel_time', 'load_avg']


def seconds_per_call(call: Callable[[], object], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    return (time.perf_counter() - start) / iters


def op_profile(path: str, x: np.ndarray, threads: int, runs: int = 20) -> Dict[str, float]:
    """Share (%) of onnxruntime's kernel time by operator type, over `runs` runs on `x`."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = os.path.join(tmp, 'profile')
        session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(runs):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    by_op: Dict[str, float] = {}
    for e in events:
        if e.get('cat') == 'Node' and e.get('name', '').endswith('_kernel_time'):
            by_op[e['args']['op_name']] = by_op.get(e['args']['op_name'], 0) + e['dur']
    total = sum(by_op.values())
    return {op: round(100 * t / total, 1) for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])}


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', required=True)
    parser.add_argument('--model', required=True)
    parser.add_argument('--data', required=True, help='folder with train/ (calibration) and val/ (top-1, agreement)')
    parser.add_argument('--img-size', type=int, nargs='+', default=None)
    parser.add_argument('--reparam', action='store_true')
    parser.add_argument('--int8', default='static', choices=deploy.MODES)
    parser.add_argument('--calibration-images', type=int, default=deploy.CALIBRATION_IMAGES)
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 2])
    parser.add_argument('--rounds', type=int, default=7)
    parser.add_argument('--out-dir', default='output/deploy_cpu')
    parser.add_argument('--also-float-attention', action='store_true',
                        help='also time and check a file with the attention kept float (--int8-float-attention)')
    parser.add_argument('--profile', action='store_true', help="also onnxruntime's per-operator profile of both files")
    parser.add_argument('--profile-file', default='', help='append the profiles here (.csv), with --profile')
    parser.add_argument('--results-file', default='')
    args = parser.parse_args(argv)

    name = os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint))) or args.model
    float_path = os.path.join(args.out_dir, f'{name}.onnx')
    saved = run_info.read_saved_args(args.checkpoint)
    size = args.img_size or saved['data_config']['input_size'][1:]
    command = ['-m', 'van_focal.export', '--model', args.model, '--checkpoint', args.checkpoint, '--out', float_path,
               '--num-classes', str(saved['num_classes']), '--img-size', *map(str, size),
               '--int8', args.int8, '--calibration-data', os.path.join(args.data, 'train'),
               '--val-data', os.path.join(args.data, 'val'), '--calibration-images', str(args.calibration_images),
               '--check-images', '100000'] + (['--reparam'] if args.reparam else [])
    print('python ' + ' '.join(command), flush=True)
    export.main(command[2:])
    int8_path = deploy.int8_path(float_path)
    meta = deploy.read_metadata(int8_path)
    data_config, names = meta['data_config'], meta['class_names']
    files = deploy.image_list(os.path.join(args.data, 'val'), '--data')
    batches = list(deploy.image_batches(files, data_config))
    labels = deploy.folder_labels(files, names)
    onnx_files = {'float32': (float_path, {}), f'int8 {args.int8}': (int8_path, meta['int8']['check'])}
    if args.also_float_attention:  # the measurement behind quantizing Focal's attention too
        calibration, _ = deploy.split_images(os.path.join(args.data, 'train'), '', args.calibration_images, 0)
        path = float_path[:-len('.onnx')] + '.int8-float-attention.onnx'
        deploy.quantize(float_path, path, args.int8, list(deploy.image_batches(calibration, data_config)),
                        keep_float=True)
        onnx_files[f'int8 {args.int8}, attention float'] = (path, deploy.compare(float_path, path, batches, labels))
    top1 = {label: check.get('top1_int8') for label, (_, check) in onnx_files.items()}
    top1['float32'] = onnx_files[f'int8 {args.int8}'][1]['top1_float']

    model = export.create_export_model(args.model, checkpoint=args.checkpoint, num_classes=len(names))
    fused = export.create_export_model(args.model, checkpoint=args.checkpoint, num_classes=len(names), reparam=True)
    eager = {'PyTorch eager': model, 'PyTorch eager, fused': fused}
    with torch.inference_mode():
        eager_top1 = {label: round(100 * float((np.concatenate([m(torch.from_numpy(b)).numpy() for b in batches])
                                                .argmax(1) == labels).mean()), 2) for label, m in eager.items()}

    x8 = np.concatenate(batches)[:8].copy()
    x1 = x8[:1].copy()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        load = os.getloadavg()[0]
        runs = {(label, 'float32'): (lambda m: lambda x: m(torch.from_numpy(x)))(m) for label, m in eager.items()}
        for label, (path, _) in onnx_files.items():
            runs[('onnxruntime', label)] = deploy.OnnxClassifier(path, threads).run_numpy
        times = {key: {1: [], 8: []} for key in runs}
        with torch.inference_mode():
            for _ in range(args.rounds):
                for key, run in runs.items():
                    for x in (x1, x8):
                        times[key][len(x)].append(seconds_per_call(lambda: run(x), 2, 20 if len(x) == 1 else 5))
        for key in runs:
            check = onnx_files[key[1]][1] if key[0] == 'onnxruntime' else {}
            row = dict(date=datetime.date.today().isoformat(), cpu=cpu_name(), commit=commit(),
                       command='python ' + ' '.join(command), model=name,
                       img_size=data_config['input_size'][-1], runtime=key[0], precision=key[1], threads=threads,
                       img_per_sec_b1=round(1 / statistics.median(times[key][1]), 1),
                       img_per_sec_b8=round(8 / statistics.median(times[key][8]), 1),
                       top1=top1[key[1]] if key[0] == 'onnxruntime' else eager_top1[key[0]],
                       agreement=check.get('agreement', ''), max_logit_diff=check.get('max_logit_diff', ''),
                       mean_logit_diff=check.get('mean_logit_diff', ''),
                       vnni='yes' if deploy.cpu_has_vnni() else 'no', load_avg=round(load, 1))
            rows.append(row)
            print(f"{name:<24} {key[0]:<22} {key[1]:<36} threads {threads}  b1 {row['img_per_sec_b1']:>8.1f}"
                  f"  b8 {row['img_per_sec_b8']:>8.1f} img/s  top-1 {row['top1']}", flush=True)
        if args.results_file:  # after each thread count: a long run interrupted keeps what it measured
            append(args.results_file, rows[-len(runs):], COLUMNS)
        if args.profile:
            for label, (path, _) in onnx_files.items():
                for x in (x1, x8):
                    shares = op_profile(path, x, threads)
                    print(f'  profile {label} b{len(x)} threads {threads}:', shares, flush=True)
                    profiles = [dict(rows[0], runtime='onnxruntime', precision=label, threads=threads, batch=len(x),
                                     op=op, pct_of_kernel_time=pct, load_avg=round(os.getloadavg()[0], 1))
                                for op, pct in shares.items() if pct >= 1]
                    if args.profile_file:
                        append(args.profile_file, profiles, PROFILE_COLUMNS)


def append(path: str, rows: List[Dict], columns: List[str]) -> None:
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
        if new:
            writer.writeheader()
        writer.writerows(rows)


if __name__ == '__main__':
    main()
