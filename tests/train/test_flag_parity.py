"""Every flag of timm's own train.py / validate.py exists here, or docs/data/timm_flags_left_out.csv lists it
as left out on purpose; the defaults that differ from timm's are the ones docs/data/defaults_vs_timm.csv lists.

The flag names of timm's scripts are committed data (tests/fixtures/timm_script_flags.txt, names only)."""
import csv
import sys
from typing import Dict, List

import pytest

from conftest import FIXTURES
from scripts import REPO

sys.path.insert(0, str(REPO))
import train  # noqa: E402
import validate  # noqa: E402

SCRIPTS = {'train.py': train, 'validate.py': validate}


def timm_flags() -> Dict[str, List[List[str]]]:
    """Per script, the option strings of each of timm's arguments."""
    flags, script = {}, None
    for line in (FIXTURES / 'timm_script_flags.txt').read_text().splitlines():
        if not line.strip() or line.startswith('#'):
            continue
        if line.startswith('['):
            script = line.strip('[]')
            flags[script] = []
        else:
            flags[script].append(line.split())
    return flags


def left_out() -> set:
    """The flags that docs/data/timm_flags_left_out.csv lists as left out on purpose (column `flags`,
    space-separated option strings), which the training docs page renders."""
    with open(REPO / 'docs' / 'data' / 'timm_flags_left_out.csv', newline='') as f:
        return {flag for row in csv.DictReader(f) for flag in row['flags'].split()}


def test_the_data_is_timms_list():
    flags = timm_flags()
    assert set(flags) == {'train.py', 'validate.py'}
    assert len(flags['train.py']) > 150 and len(flags['validate.py']) > 50
    assert ['-b', '--batch-size'] in flags['train.py'] and ['--pretrained-path'] in flags['train.py']


@pytest.mark.parametrize('script', list(SCRIPTS))
def test_every_timm_flag_is_here_or_left_out_with_a_reason(script):
    ours = {}
    for action in SCRIPTS[script].build_parser()._actions:
        for option in action.option_strings:
            ours[option] = action.dest
    excused = left_out()
    missing = [names[0] for names in timm_flags()[script] if not any(n in ours or n in excused for n in names)]
    assert not missing, f'{script} lacks these timm flags, and docs/data/timm_flags_left_out.csv does not list them: {missing}'
    for names in timm_flags()[script]:
        present = [n for n in names if n in ours]
        if present:
            # The same argument as in timm: every spelling timm accepts, one destination, timm's name for it.
            assert present == names, f'{script}: timm accepts {names}, here only {present}'
            assert len({ours[n] for n in names}) == 1
            long_name = next((n for n in names if n.startswith('--')), names[0])
            assert ours[long_name] == long_name.lstrip('-').replace('-', '_') or long_name == '--dr'


def test_left_out_flags_really_are_absent():
    """The list stays honest: nothing in it exists in our parsers."""
    ours = {o for module in SCRIPTS.values() for a in module.build_parser()._actions for o in a.option_strings}
    assert not left_out() & ours


DEFAULTS = {'train.py': 'defaults_vs_timm.csv', 'validate.py': 'validate_defaults_vs_timm.csv'}


@pytest.mark.parametrize('script', list(SCRIPTS))
def test_the_defaults_said_to_differ_from_timms_are_ours(script, capsys):
    """Each row's `ours` is the parser's default (a text in the form '(empty): ...' for an empty default),
    differs from `timm`, and --help shows the row."""
    with open(REPO / 'docs' / 'data' / DEFAULTS[script], newline='') as f:
        rows = list(csv.DictReader(f))
    parser = SCRIPTS[script].build_parser()
    dests = {o: a.dest for a in parser._actions for o in a.option_strings}
    for row in rows:
        default = parser.get_default(dests[row['flag'].split()[-1]])
        if row['ours'].startswith('(empty)'):
            assert default in ('', None), row
        else:
            assert str(default) == row['ours'], row
        assert row['ours'] != row['timm'], row
    with pytest.raises(SystemExit):
        parser.parse_args(['--help'])
    shown = capsys.readouterr().out
    assert all(f"  {row['flag']}  " in shown or f"  {row['flag']} " in shown for row in rows)


@pytest.mark.scripts
def test_timm_flags_from_the_issue_work_in_a_run(tmp_path, monkeypatch):
    """The flags issue #15 found missing, in one short run: each reaches the part of timm that it sets."""
    from scripts import TINY_RUN, load, make_tiny_dataset
    from van_focal.train.steps import AtomicCheckpointSaver
    positions, save_position = [], AtomicCheckpointSaver.save_position
    monkeypatch.setattr(AtomicCheckpointSaver, 'save_position',
                        lambda saver, position: positions.append(position) or save_position(saver, position))
    data = make_tiny_dataset(tmp_path / 'data')
    train.main([str(a) for a in [*TINY_RUN, '--data-dir', data, '--epochs', '1', '--no-aug', '--bce-loss', '--gp', 'max',
                                 '--in-chans', '3', '--input-img-mode', 'RGB', '--opt-kwargs', 'foreach=False',
                                 '--recovery-interval', '2', '--output', tmp_path, '--experiment', 'run']])
    run = tmp_path / 'run'
    # --recovery-interval 2: last.pth.tar resumable after update 2 of the epoch's 3
    assert [(p['epoch'], p['batches_done']) for p in positions] == [(0, 2)]
    args = load(run / 'last.pth.tar')['args']
    assert (args.gp, args.no_aug, args.bce_loss, args.opt_kwargs, args.data) == ('max', True, True, {'foreach': False},
                                                                                 str(data))
