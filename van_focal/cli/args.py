"""Command-line plumbing shared by train.py, validate.py and benchmark.py.

`--config FILE.yaml` sets argparse defaults (keys are flag names, with - or _), the command line
overrides it. A user's mistake ends the program with one message and exit status 2; a genuine
bug keeps its traceback.
"""
import argparse
import csv
import difflib
import json
import logging
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Set, Union

import timm
from timm import utils
import yaml

from ..core.errors import USER_ERRORS, UsageError  # noqa: F401  (UsageError: imported from here by the scripts)

_logger = logging.getLogger(__name__)


def defaults_epilog(csv_path: str, script: str) -> str:
    """The `--help` epilog naming each default that differs from timm's own `script`: the rows of the CSV
    file (columns flag, timm, ours, why) that the docs' training page renders too."""
    with open(csv_path, newline='') as f:
        rows = list(csv.DictReader(f))
    width = max(len(row['flag']) for row in rows)
    lines = [f"defaults that differ from timm's {script} (docs/data/{os.path.basename(csv_path)}):"]
    lines += [f"  {row['flag']:<{width}}  {row['ours']} (timm: {row['timm']}): {row['why']}" for row in rows]
    return '\n'.join(lines)


def run_main(main: Callable[[], Any]) -> None:
    """Run `main`, turning a user's mistake into one message on stderr and exit status 2."""
    try:
        main()
    except USER_ERRORS as e:
        _logger.debug('details', exc_info=True)
        print(f'error: {one_message(e)}', file=sys.stderr)
        sys.exit(2)


def one_message(error: BaseException) -> str:
    """The error's own message, also when a DataLoader worker re-raised it with the worker's traceback."""
    text = str(error)
    marker = f'{type(error).__name__}: '
    if 'Original Traceback' in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip()


def _config_error(path: str, message: str) -> UsageError:
    return UsageError(f'{path}: {message}')


def _check_value(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """`value` converted to what `action` would have parsed from the command line, or a UsageError."""
    if value is None:
        return None
    if isinstance(action, utils.ParseKwargs):  # --model-kwargs: a mapping in YAML, or KEY=VALUE strings
        if isinstance(value, dict):
            return dict(value)
        parsed = argparse.Namespace()
        action(None, parsed, [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])])
        return getattr(parsed, action.dest)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise _config_error(path, f"key '{key}' must be true or false, got {value!r}.")
        return value
    many = action.nargs in ('+', '*') or isinstance(action.nargs, int)
    if many:
        values = value if isinstance(value, (list, tuple)) else [value]
        if action.nargs == '+' and not values:
            raise _config_error(path, f"key '{key}' needs at least one value.")
        if isinstance(action.nargs, int) and len(values) != action.nargs:
            example = ', '.join(str(d) for d in action.default) if action.default else ', '.join(['...'] * action.nargs)
            raise _config_error(path, f"key '{key}' takes {action.nargs} values, got {value!r}. "
                                      f"Write a list, e.g. {key}: [{example}].")
        return [_convert(path, key, v, action) for v in values]
    if isinstance(value, (list, dict)):
        raise _config_error(path, f"key '{key}' takes one value, got {value!r}.")
    return _convert(path, key, value, action)


def _convert(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    kind = action.type
    if isinstance(value, bool) and kind is not None:
        raise _config_error(path, f"key '{key}' does not take true/false, got {value!r}.")
    converted = value
    if kind is not None:
        try:
            converted = kind(value)
        except (TypeError, ValueError):
            raise _config_error(path, f"key '{key}' must be {getattr(kind, '__name__', kind)}, got {value!r}.") from None
        if kind is int and isinstance(value, float) and value != converted:
            raise _config_error(path, f"key '{key}' must be int, got {value!r}.")
    if action.choices is not None and converted not in action.choices:
        raise _config_error(path, f"key '{key}' must be one of {sorted(action.choices)}, got {value!r}.")
    return converted


# Names other training configs (Swin / Focal's yacs, mmpretrain, Keras) use for timm's flags.
CONFIG_SYNONYMS = {
    'learning_rate': 'lr', 'base_lr': 'lr_base', 'optimizer': 'opt', 'label_smoothing': 'smoothing',
    'drop_path_rate': 'drop_path', 'drop_rate': 'drop', 'image_size': 'img_size', 'num_workers': 'workers',
    'accumulation_steps': 'grad_accum_steps', 'warmup_lr_init': 'warmup_lr', 'lr_min': 'min_lr',
    'num_epochs': 'epochs', 'max_epochs': 'epochs', 'n_classes': 'num_classes',
}


def read_config(path: str, parser: argparse.ArgumentParser) -> Dict[str, Any]:
    """The defaults a YAML config sets, keyed by argparse dest, checked against `parser`'s flags."""
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UsageError(f'--config {path}: no such file.') from None
    except yaml.YAMLError as e:
        raise _config_error(path, f'not valid YAML ({str(e).splitlines()[0]}).') from None
    if not isinstance(config, dict):
        raise _config_error(path, 'must be a mapping of flag names to values.')
    actions = {a.dest: a for a in parser._actions if a.dest != 'help'}
    defaults, problems = {}, []
    for key, value in config.items():  # every problem of the file in one message: each run costs a start-up
        dest = str(key).lstrip('-').replace('-', '_')
        if dest not in actions:
            synonym = difflib.get_close_matches(dest.lower(), list(CONFIG_SYNONYMS), n=1, cutoff=0.85)
            known = [CONFIG_SYNONYMS[synonym[0]]] if synonym and CONFIG_SYNONYMS[synonym[0]] in actions else []
            close = known or difflib.get_close_matches(dest, list(actions), n=3)
            problems.append((f"unknown key '{key}'", f"Did you mean {', '.join(close)}?" if close else ''))
            continue
        try:
            defaults[dest] = _check_value(path, str(key), value, actions[dest])
        except UsageError as e:
            problems.append((str(e)[len(path) + 2:].rstrip('.'), ''))
    if len(problems) == 1:
        text, hint = problems[0]
        raise _config_error(path, f'{text}.{" " + hint if hint else ""}')
    if problems:
        raise _config_error(path, f'{len(problems)} problems: ' + '; '.join(
            f'{text}{f" ({hint[0].lower()}{hint[1:]})" if hint else ""}' for text, hint in problems) + '.')
    return defaults


def parse_args(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse `argv` with the defaults of `--config FILE` (if given) under the command line."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', default='')
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**read_config(known.config, parser))
    return parser.parse_args(argv)


def given_flags(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> Set[str]:
    """The dests that the command line `argv` or its `--config` file set explicitly (not left to a default)."""
    defaults = {a.dest: a.default for a in parser._actions}
    parser_defaults = dict(parser._defaults)
    try:
        parser._defaults.clear()
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        explicit, _ = parser.parse_known_args(argv)
    finally:
        parser._defaults.update(parser_defaults)
        for action in parser._actions:
            action.default = defaults[action.dest]
    given = set(vars(explicit)) - {'help'}
    if getattr(explicit, 'config', ''):
        given |= set(read_config(explicit.config, parser))
    return given


def add_data_root_args(parser, help: str) -> None:
    """The dataset root, as timm: positional ROOT or --data-dir."""
    parser.add_argument('data', nargs='?', default=None, metavar='ROOT', help=help)
    parser.add_argument('--data-dir', default=None, metavar='ROOT', help='the same as ROOT')


def data_root(args) -> str:
    root = args.data or args.data_dir
    if not root:
        raise UsageError('no dataset: give its root folder (ROOT or --data-dir).')
    return root


def add_named_dataset_args(parser) -> None:
    """timm's flags for `--dataset` kinds other than folders (hfds/, wds/, torch/, tfds/)."""
    parser.add_argument('--dataset-download', action='store_true', help='torch/... datasets: download if absent')
    parser.add_argument('--input-key', default=None, help='hfds/wds: the image column')
    parser.add_argument('--target-key', default=None, help='hfds/wds: the label column')
    parser.add_argument('--dataset-trust-remote-code', action='store_true', help="hfds: run the dataset's own code")


def named_dataset_kwargs(args, num_samples: Optional[int]) -> Dict[str, Any]:
    """`create_dataset` kwargs from the flags above, for `--dataset NAME`; {} for image folders."""
    if not args.dataset:
        return {}
    return dict(class_map=args.class_map, download=args.dataset_download, num_samples=num_samples,
                input_key=args.input_key, target_key=args.target_key, trust_remote_code=args.dataset_trust_remote_code)


def add_model_input_args(parser, img_size_nargs=None) -> None:
    """The flags train.py and validate.py share (timm's names): trusting a checkpoint, classes, preprocessing.
    `img_size_nargs='+'`: `--img-size N` or `H W` (export)."""
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='load checkpoints with weights_only=False; only for files you trust')
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--class-map', default='', metavar='FILE', help='class names in index order (.txt, one a line)')
    parser.add_argument('--gp', default=None, help='global pool type of the head (avg, max, avgmax, ...)')
    parser.add_argument('--in-chans', type=int, default=None, help='input channels (default: --input-size, else 3)')
    parser.add_argument('--input-img-mode', default=None, help='PIL image mode (default: RGB, or L for 1 channel)')
    if img_size_nargs:
        parser.add_argument('--img-size', type=int, nargs=img_size_nargs, default=None, metavar='N',
                            help='input H W, or one N for N x N')
    else:
        parser.add_argument('--img-size', type=int, default=None)
    parser.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'))
    parser.add_argument('--crop-pct', type=float, default=None, help="default: the model's pretrained_cfg")
    parser.add_argument('--crop-mode', default=None, help='center, squash or border (default: center)')
    parser.add_argument('--mean', type=float, nargs='+', default=None)
    parser.add_argument('--std', type=float, nargs='+', default=None)
    parser.add_argument('--interpolation', default='')


# Look-alike characters folded before names are compared: 'van_bo' is closest to van_b0, 'van_bl' to van_b1.
_LOOK_ALIKE = str.maketrans({'o': '0', 'l': '1', '-': '_', ' ': '_'})


def close_model_names(name: str, n: int = 5, cutoff: float = 0.6) -> List[str]:
    """Registered names a mistyped `name` probably meant: the names it begins (focal_tiny -> focal_tiny_*),
    then the most similar ones (difflib's ratio, compared in lower case with look-alike characters folded),
    ties in alphabetical order (van_b9 -> van_b0, van_b1, ...)."""
    base = name.split('.')[0].lower()
    models = timm.list_models()
    completions = [m for m in models if base and m.startswith(base)]
    folded = base.translate(_LOOK_ALIKE)
    matcher = difflib.SequenceMatcher(b=folded)
    scored = []
    for model in models:
        matcher.set_seq1(model.translate(_LOOK_ALIKE))
        if matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff and matcher.ratio() >= cutoff:
            scored.append((-matcher.ratio(), model))
    similar = [model for _, model in sorted(scored)]
    return list(dict.fromkeys(completions + similar))[:n]


def check_model_name(name: str) -> None:
    """A UsageError suggesting close names when `name` is not a registered model."""
    base = name.split('.')[0]
    if name.startswith(('hf-hub:', 'hf_hub:', 'local-dir:')) or timm.is_model(base):
        return
    close = close_model_names(name)
    hint = f" Close names: {', '.join(close)}." if close else " See timm.list_models('van*') and ('focal*')."
    raise UsageError(f"--model {name}: no such model.{hint}")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: a container's or taskset's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(most: int = 4) -> int:
    """The default DataLoader worker count: `most`, but no more than the usable cores (more draws torch's warning
    and only adds processes competing for the same cores)."""
    return max(1, min(most, usable_cores()))


def write_results(path: str, results: Union[Dict[str, Any], List[Dict[str, Any]]], results_format: str = '') -> None:
    """`results` (one row, or a list of rows) as JSON, or as CSV with a header: by `results_format`, else by
    the file's extension (--results-file / --results-format of timm's scripts)."""
    rows = [results] if isinstance(results, dict) else results
    with open(path, 'w', newline='') as f:
        if (results_format or os.path.splitext(path)[1][1:]) == 'json':
            json.dump(results, f, indent=2)
            return
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
