"""docs/other_libraries.md runs as written: every ```python block of the page, with its placeholders pointed at this
repository (`path/to/van_focal`), a tiny image folder (`path/to/images`) and one of its images (`path/to/image.jpg`).
The page's ```py blocks download from GitHub and are shown only.

smp, fastai and transformers are no dependencies of the project: their blocks run in `make test-clients` (their own
environment, .venv-clients, from requirements-clients.txt) and are skipped in the project's environment, where the
torch.hub and torchvision blocks run.
"""
import json
import re

import pytest
import timm
import torch

import van_focal  # noqa: F401
from scripts import REPO, make_tiny_dataset

DOC = REPO / 'docs' / 'other_libraries.md'
SECTIONS = ['torch.hub', 'segmentation_models_pytorch', 'fastai', 'transformers', 'torchvision detection']


def snippet(section: str) -> str:
    """The one ```python block under the page's `## section` heading."""
    text = re.split(r'^## ', DOC.read_text(), flags=re.M)
    body = next(part for part in text[1:] if part.splitlines()[0] == section)
    blocks = re.findall(r'^```python\n(.*?)^```', body, flags=re.S | re.M)
    assert len(blocks) == 1, f'{section}: {len(blocks)} python blocks'
    return blocks[0]


@pytest.fixture
def run_snippet(tmp_path, monkeypatch):
    data = make_tiny_dataset(tmp_path / 'images')
    image = next((data / 'val' / 'circle').iterdir())
    monkeypatch.chdir(tmp_path)  # what the blocks write (exports) lands there

    def run(section: str) -> dict:
        code = snippet(section)
        for placeholder, value in (('path/to/van_focal', REPO), ('path/to/images', data), ('path/to/image.jpg', image)):
            code = code.replace(f"'{placeholder}'", repr(str(value)))
        namespace = {'__name__': f'other_libraries.{section}'}
        exec(compile(code, f'{DOC} ({section})', 'exec'), namespace)
        return namespace
    return run


def test_the_page_has_one_tested_block_per_library():
    headings = re.findall(r'^## (.*)$', DOC.read_text(), flags=re.M)
    assert headings == SECTIONS
    for section in SECTIONS:
        snippet(section)


def test_torch_hub(run_snippet):
    ns = run_snippet('torch.hub')
    assert ns['model'].num_classes == 10 and ns['model'].pretrained_cfg['architecture'] == 'van_b0'
    assert ns['backbone'].feature_info.reduction() == [4, 8, 16, 16]


def test_torchvision_detection(run_snippet):
    ns = run_snippet('torchvision detection')
    assert {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'} == set(ns['losses'])
    assert {'boxes', 'labels', 'scores'} == set(ns['detections'][0])


def test_segmentation_models_pytorch(run_snippet):
    pytest.importorskip('segmentation_models_pytorch', reason='make test-clients runs it')
    ns = run_snippet('segmentation_models_pytorch')
    assert ns['deeplab'].encoder.model.feature_info.reduction() == [4, 8, 16, 16]
    with torch.no_grad():
        for model in (ns['unet'], ns['deeplab'], ns['focal_fpn']):
            assert model(ns['images']).shape == (2, 5, 256, 320)


def test_fastai(run_snippet, tmp_path):
    pytest.importorskip('fastai', reason='make test-clients runs it')
    from fastai.vision.all import load_learner, vision_learner
    ns = run_snippet('fastai')
    exported = load_learner(tmp_path / 'images' / 'van_b0.pkl')  # learn.path: the data folder
    image = next((tmp_path / 'images' / 'val' / 'circle').iterdir())
    assert exported.predict(image)[0] in ('circle', 'square', 'triangle')
    assert len(ns['learn'].recorder.values) == 1  # the Focal Learner trained its epoch
    # what the page says of vision_learner with Focal: the channels-last features break fastai's head
    learn = vision_learner(ns['dls'], 'focal_tiny_patch4_window7_224', pretrained=False, img_size=64)
    with pytest.raises(RuntimeError, match='running_mean should contain'):
        learn.model.eval()(ns['dls'].one_batch()[0])


def test_transformers(run_snippet, tmp_path):
    pytest.importorskip('transformers', reason='make test-clients runs it')
    from PIL import Image
    from timm.models import save_for_hf
    from transformers import TimmWrapperForImageClassification, TimmWrapperImageProcessor
    ns = run_snippet('transformers')
    loaded = TimmWrapperForImageClassification.from_pretrained('focal-tiny-hf').eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=ns['images']).logits, ns['model'](ns['images']))
    assert ns['hf_model'].config.num_labels == 5
    predictions = ns['classify'](str(next((tmp_path / 'images' / 'val' / 'square').iterdir())))
    assert len(predictions) == 3 and abs(sum(p['score'] for p in predictions) - 1) < 1e-4

    # the channel count travels: a 1-channel model exports (1, H, W), its image processor feeds one channel
    model = timm.create_model('van_b0', in_chans=1, num_classes=3, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))
    save_for_hf(model.eval(), tmp_path / 'gray')
    config = json.loads((tmp_path / 'gray' / 'config.json').read_text())
    config['model_args'].pop('num_classes')
    (tmp_path / 'gray' / 'config.json').write_text(json.dumps(config))
    hf_model = TimmWrapperForImageClassification.from_pretrained(tmp_path / 'gray').eval()
    processor = TimmWrapperImageProcessor.from_pretrained(tmp_path / 'gray')
    assert hf_model.config.pretrained_cfg['input_size'][0] == 1 and processor.data_config['mean'] == (0.5,)
    gray = Image.open(next((tmp_path / 'images' / 'val' / 'circle').iterdir())).convert('L')
    pixels = processor(gray, return_tensors='pt')['pixel_values']
    assert pixels.shape == (1, 1, 224, 224)
    with torch.no_grad():
        assert torch.equal(hf_model(pixel_values=pixels).logits, model(pixels))


@pytest.mark.parametrize('name', ['van_b0', 'focal_tiny_useconv_patch4_window7_224',
                                  'focalv2_tiny_useconv_patch4_window7_224'])
def test_transformers_loads_every_family(name, tmp_path):
    """Focal v1 (the page's block) broke here while its relative-position indices were buffers; the others too."""
    pytest.importorskip('transformers', reason='make test-clients runs it')
    from timm.models import save_for_hf
    from transformers import TimmWrapperForImageClassification
    tiny = dict(embed_dims=(8, 16, 24, 32)) if name.startswith('van') else dict(embed_dim=16, num_heads=(1, 2, 2, 4))
    model = timm.create_model(name, num_classes=3, depths=(1, 1, 1, 1), **tiny).eval()
    save_for_hf(model, tmp_path)
    config = json.loads((tmp_path / 'config.json').read_text())
    config['model_args'].pop('num_classes')
    (tmp_path / 'config.json').write_text(json.dumps(config))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = TimmWrapperForImageClassification.from_pretrained(tmp_path).eval()(pixel_values=images).logits
        assert torch.equal(logits, model(images))
