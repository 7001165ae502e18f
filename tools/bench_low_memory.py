#!/usr/bin/env python3
"""VAN's training step through the saving functions (`low_memory`, the default) against autograd's own backward.

    python tools/bench_low_memory.py --models van_b0,van_b2 --threads 2 --results-file results/low_memory.csv

Both ways run on one model, timed in interleaved rounds (median img/s), in NCHW and channels_last; also
counted: the activation memory per image of each (bytes saved for backward, `van_focal.core.saved_memory`).
What the saving costs or gains in speed depends on the CPU and on what else loads its memory: measure it here.
"""
import argparse
import datetime
import os
import sys

import timm
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_official  # noqa: E402  (the interleaved timer, the training step, the memory count)

import van_focal  # noqa: F401,E402
from van_focal.cli.args import write_results  # noqa: E402


def _under(context, step) -> None:
    with context:
        step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', default='van_b0,van_b2')
    parser.add_argument('-b', '--batch-size', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--amp-dtype', default='', choices=['', 'bfloat16'],
                        help='under CPU autocast in this dtype (default: float32, no autocast)')
    parser.add_argument('--results-file', default='')
    args = parser.parse_args()
    x, cpu = bench_official.setup_run(args)
    commit = bench_official.commit()
    amp = torch.autocast('cpu', dtype=torch.bfloat16, enabled=bool(args.amp_dtype))
    setup = (f'{"bfloat16 autocast" if args.amp_dtype else "float32"}, batch {args.batch_size}, 224², '
             f'{torch.get_num_threads()} threads, SGD step, interleaved rounds, median of {args.repeats}; '
             f'torch {torch.__version__}, timm {timm.__version__}')
    print(f'{cpu}; {setup}', flush=True)
    rows = []
    for name in args.models.split(','):
        model = timm.create_model(name, drop_path_rate=0.)
        memory = {}
        for enable in (True, False):
            model.set_low_memory(enable)
            with amp:
                memory[enable] = bench_official.activation_mib_per_image(model, x)
        for layout in ('NCHW', 'channels_last'):
            fmt = torch.channels_last if layout == 'channels_last' else torch.contiguous_format
            model, inp = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
            steps = {}
            for enable in (True, False):
                step = bench_official.train_step(model, inp)
                steps[enable] = lambda step=step, enable=enable: (model.set_low_memory(enable), _under(amp, step))
            speed = bench_official.interleaved(steps, args.batch_size, 1, args.repeats)
            row = dict(date=datetime.date.today().isoformat(), cpu=cpu, commit=commit,
                       command='python tools/bench_low_memory.py ' + ' '.join(sys.argv[1:]), setup=setup, model=name,
                       layout=layout, low_memory_img_per_sec=round(speed[True], 2),
                       autograd_img_per_sec=round(speed[False], 2), speed_ratio=round(speed[True] / speed[False], 2),
                       low_memory_mib_per_image=memory[True], autograd_mib_per_image=memory[False],
                       memory_ratio=round(memory[True] / memory[False], 2))
            rows.append(row)
            print(f"{name} {layout}: low_memory {row['low_memory_img_per_sec']} img/s, autograd "
                  f"{row['autograd_img_per_sec']} img/s, {row['speed_ratio']}x; activations {memory[True]} / "
                  f"{memory[False]} MiB/image", flush=True)
    if args.results_file:
        write_results(args.results_file, rows)


if __name__ == '__main__':
    main()
