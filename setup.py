from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path('van_focal/core/version.py').read_text(), version)

setup(
    name='van_focal',
    version=version['__version__'],
    description='VAN and Focal Transformer backbones in the timm model registry, with ImageNet train/validate tools',
    long_description=Path('README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['van_focal', 'van_focal.*']),
    python_requires='>=3.9',
    install_requires=['torch>=2.4', 'torchvision', 'timm>=1.0.31,<1.1', 'pyyaml', 'protobuf>=4.22'],
    extras_require={
        # the set of requirements-npu.txt: torch_npu pins torch exactly; docs/npu.md gives the install order
        'npu': ['torch-npu==2.14.0', 'torch==2.14.0', 'torchvision==0.29.0'],
        'test': ['pytest', 'onnx', 'onnxruntime', 'onnxscript'],
        'export': ['onnx', 'onnxruntime', 'onnxscript'],
        'plot': ['matplotlib'],
    },
    entry_points={'console_scripts': [
        f'van-focal-{name} = van_focal.cli.{name}:run' for name in ('predict', 'export', 'doctor', 'shapes', 'convert')]},
    license='Apache-2.0',
)
