"""The package's layers import one way: commands (`cli`) -> training (`train`) -> models -> `core`.

Every `import` and `from ... import` of every module of van_focal is read (relative ones resolved), and
each must name a module of its own layer or of a lower one. `models` is self-contained: beside torch,
timm and the standard library it needs `core` only. The package root (`__init__` and the `python -m`
shims of the old module paths) stands above all layers."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'van_focal'
LAYERS = {'core': 0, 'models': 1, 'train': 2, 'cli': 3}
ROOT = max(LAYERS.values()) + 1


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer(module: str) -> int:
    parts = module.split('.')
    return LAYERS.get(parts[1], ROOT) if len(parts) > 1 else ROOT


def imported_modules(path: Path, name: str = ''):
    """(line, module) of every van_focal module that `path` (the module `name`, by default found from the
    path) imports; `from X import name` counts X.name when it is a module (`from van_focal.core import device`)."""
    name = name or module_name(path)
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                candidate = f'{target}.{alias.name}'
                is_module = (PACKAGE.parent / candidate.replace('.', '/')).with_suffix('.py').exists() or \
                    (PACKAGE.parent / candidate.replace('.', '/') / '__init__.py').exists()
                yield node.lineno, candidate if is_module else target


MODULES = sorted(PACKAGE.rglob('*.py'))


def test_the_layers_exist():
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / '__init__.py').exists()} == set(LAYERS)


@pytest.mark.parametrize('path', MODULES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_upward_import(path):
    own = layer(module_name(path))
    upward = [f'line {line}: {module} ({[k for k, v in LAYERS.items() if v == layer(module)] or ["package root"]})'
              for line, module in imported_modules(path)
              if module.split('.')[0] == 'van_focal' and layer(module) > own]
    assert not upward, f'{path.relative_to(PACKAGE.parent)} imports upward: {upward}'


def test_the_test_sees_an_upward_import(tmp_path):
    """The check itself: a models module importing from train is caught."""
    fake = tmp_path / '_upward_probe.py'
    fake.write_text('from ..train import data\nimport van_focal.cli.args\nfrom ..core import device\n')
    found = [m for _, m in imported_modules(fake, 'van_focal.models._upward_probe') if layer(m) > LAYERS['models']]
    assert found == ['van_focal.train.data', 'van_focal.cli.args']
