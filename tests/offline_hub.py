"""A Hugging Face hub cache laid out on disk, used with the hub offline: no network in the tests."""
import shutil
from pathlib import Path
from typing import Dict

import huggingface_hub.constants
import pytest

REVISION = '0123456789abcdef0123456789abcdef01234567'


def add_repo(cache: Path, repo_id: str, files: Dict[str, Path]) -> None:
    """Files of a hub model repo as `hf_hub_download` caches them: models--org--name/snapshots/<rev>/..., refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / 'snapshots' / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        shutil.copyfile(source, snapshot / name)
    (repo / 'refs').mkdir(exist_ok=True)
    (repo / 'refs' / 'main').write_text(REVISION)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty hub cache, with HF_HUB_OFFLINE=1; returns the cache folder for `add_repo`."""
    cache = tmp_path / 'hf_hub_cache'
    cache.mkdir()
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return cache
