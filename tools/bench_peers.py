#!/usr/bin/env python3
"""Our models against the models a user would pick instead (timm's own), timed interleaved in one run.

    python tools/bench_peers.py --threads 2 --results-file results/speed_peers.csv
    python tools/bench_peers.py --official-van PATH/VAN-Classification --official-focal PATH/Focal-Transformer

Pairs: Focal-T and Focal-fast-T against timm's `swin_tiny_patch4_window7_224`, VAN-B2 against timm's
`convnext_tiny` (random weights: speed and memory do not depend on them). With the official repositories
given (as for tools/bench_official.py), the official models of the same architectures join the rounds.
Every model runs in NCHW and channels_last; inference and an SGD training step are timed in alternating
rounds (median img/s), each model's best layout is compared. Also reported: the activation memory per image
(bytes autograd saves for one training step's backward, distinct storages, parameters excluded:
`van_focal.core.saved_memory`), and the ratios ours / peer. Rows go to --results-file (.csv: date, cpu,
commit, command, ...), the table to stdout as Markdown.
"""
import argparse
import datetime
import os
import sys

import timm
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_official  # noqa: E402  (the run's setup, the interleaved timer and the official builders)

import van_focal  # noqa: F401,E402
from van_focal.cli.args import write_results  # noqa: E402

# ours -> (peer in timm, the name of ours in bench_official's official pairs)
PAIRS = {
    'focal_tiny_patch4_window7_224': ('swin_tiny_patch4_window7_224', 'focal_t'),
    'focalv2_tiny_useconv_patch4_window7_224': ('swin_tiny_patch4_window7_224', 'focalv2_t'),
    'van_b2': ('convnext_tiny', 'van_b2'),
}

# issue #21's targets, ours / theirs: {(ours, against 'peer' or 'official'): (inference, training step)}
GOALS = {
    ('focal_tiny_patch4_window7_224', 'peer'): (1.0, 1.0),
    ('focalv2_tiny_useconv_patch4_window7_224', 'peer'): (1.2, 1.2),
    ('van_b2', 'peer'): (1.1, 1.1),
    ('focal_tiny_patch4_window7_224', 'official'): (2.5, 2.0),
    ('focalv2_tiny_useconv_patch4_window7_224', 'official'): (1.5, 1.5),
    ('van_b2', 'official'): (1.5, 1.3),
}
ACTIVATION_GOAL = 0.6  # ours / official


def goal_columns(model: str, who: str, mode: str, ratio: float, activation_ratio: float) -> dict:
    """The target of a row and whether it was met (speed; activation memory against the official code)."""
    if (model, who) not in GOALS:
        return dict(goal='', at_goal='')
    goal = GOALS[(model, who)][0 if mode == 'inference' else 1]
    met = ratio >= goal and (who != 'official' or activation_ratio <= ACTIVATION_GOAL)
    return dict(goal=f'≥ {goal}×' + (f', memory ≤ {ACTIVATION_GOAL}×' if who == 'official' else ''),
                at_goal='yes' if met else 'no')


def create(name: str) -> nn.Module:
    return timm.create_model(name, drop_path_rate=0.)


def best(speed: dict, who: str) -> tuple:
    key = max((k for k in speed if k.split(' ')[0] == who), key=speed.get)
    return speed[key], key[len(who) + 1:] or 'NCHW'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', default=','.join(PAIRS), help=f'comma-separated, of {", ".join(PAIRS)}')
    parser.add_argument('--official-van', default='')
    parser.add_argument('--official-focal', default='')
    parser.add_argument('--bench', default='both', choices=['infer', 'train', 'both'])
    parser.add_argument('-b', '--batch-size', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--layouts', default='nchw,channels_last',
                        help='memory layouts each model runs in (the best is compared): nchw, channels_last or both')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--results-file', default='')
    args = parser.parse_args()
    x, cpu = bench_official.setup_run(args)
    commit = bench_official.commit()
    command = 'python tools/bench_peers.py ' + ' '.join(sys.argv[1:])
    setup = (f'float32, batch {args.batch_size}, 224², {torch.get_num_threads()} threads, interleaved rounds, median of '
             f'{args.repeats}; torch {torch.__version__}, timm {timm.__version__}')
    print(f'{cpu}; {setup}', flush=True)
    layouts = [(' channels_last', x.contiguous(memory_format=torch.channels_last)) if layout == 'channels_last'
               else ('', x) for layout in args.layouts.split(',')]
    rows = []
    for name in args.models.split(','):
        peer_name, official_name = PAIRS[name]
        models = {'ours': create(name), 'peer': create(peer_name)}
        official_given = args.official_focal if official_name.startswith('focal') else args.official_van
        if official_given:
            models['official'], models['ours'] = bench_official.build_pair(official_name, args)
        memory = {who: bench_official.activation_mib_per_image(m, x) for who, m in models.items()}
        for mode in (['infer', 'train'] if args.bench == 'both' else [args.bench]):
            steps = {}
            for who, model in models.items():
                model.train(mode == 'train')
                for layout, inp in layouts:
                    make = bench_official.infer_step if mode == 'infer' else bench_official.train_step
                    steps[who + layout] = make(model, inp)
            speed = bench_official.interleaved(steps, args.batch_size, 1, args.repeats)
            ours, ours_layout = best(speed, 'ours')
            for who in [w for w in models if w != 'ours']:
                theirs, their_layout = best(speed, who)
                row = dict(date=datetime.date.today().isoformat(), cpu=cpu, commit=commit, command=command, setup=setup,
                           model=name, against=peer_name if who == 'peer' else f'official {official_name}',
                           mode='inference' if mode == 'infer' else 'training step',
                           ours_layout=ours_layout, their_layout=their_layout, ours_img_per_sec=round(ours, 2),
                           their_img_per_sec=round(theirs, 2), ratio=round(ours / theirs, 2),
                           ours_activation_mib_per_image=memory['ours'],
                           their_activation_mib_per_image=memory[who],
                           activation_ratio=round(memory['ours'] / memory[who], 2))
                row.update(goal_columns(name, who, row['mode'], row['ratio'], row['activation_ratio']))
                rows.append(row)
                print(f"{name} vs {row['against']}, {row['mode']}: ours {ours:.2f} img/s ({ours_layout}), "
                      f"theirs {theirs:.2f} img/s ({their_layout}), ratio {row['ratio']:.2f}x; activations "
                      f"{memory['ours']} / {memory[who]} MiB/image", flush=True)
    print('\n| ours | against | mode | CPU | ours img/s | their img/s | ratio | ours MiB/image | their MiB/image |\n'
          '| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |')
    for r in rows:
        print(f"| {r['model']} | {r['against']} | {r['mode']} | {r['cpu']} | {r['ours_img_per_sec']} | "
              f"{r['their_img_per_sec']} | {r['ratio']}x | {r['ours_activation_mib_per_image']} | "
              f"{r['their_activation_mib_per_image']} |")
    if args.results_file:
        write_results(args.results_file, rows)


if __name__ == '__main__':
    main()
