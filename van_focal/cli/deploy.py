"""Deploy on a CPU: ONNX files that carry their preprocessing and class names and run in onnxruntime, and
INT8 versions of them made by onnxruntime's post-training quantizer, with their agreement to float stated.

    python -m van_focal.export --model van_b0 --checkpoint RUN/model_best.pth.tar --reparam --out van.onnx \\
        --int8 --calibration-data DATA/train --val-data DATA/val
    python -m van_focal.predict photos/ --onnx van.int8.onnx

Each .onnx file `van_focal.export` writes carries in its metadata_props: `van_focal.model`,
`van_focal.data_config` (input_size, interpolation, mean, std, crop_pct, crop_mode, as JSON) and, where
known, `van_focal.class_names` (JSON list in index order), taken from the checkpoint as validate.py does.
`--int8` (static) quantizes weights per channel and activations per tensor to 8 bits (QDQ format;
`onnxruntime.quantization.quantize_static`), with activation ranges calibrated (MinMax) on N images of
`--calibration-data` passed through the model's own preprocessing; `--int8-float-attention` keeps Focal's
attention (softmax, query-key and attention-value matmuls) in float. The INT8 file is then checked against the
float one on held-out images (the rest of the folder, or `--val-data`): how many top-1 predictions
agree, the max / mean |logit difference|, and top-1 of both where the folder names the classes. The
check is printed and stored as `van_focal.int8`. `--int8 dynamic` (`quantize_dynamic`: weights only,
activations quantized at run time, no calibration) is the alternative for the Focal family.
"""
import argparse
import json
import os
import random
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..core.errors import UsageError
from ..train import run_info

PREFIX = 'van_focal.'
DATA_CONFIG_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
MODES = ('static', 'dynamic')
CALIBRATION_IMAGES = 128
CHECK_IMAGES = 500
SEED = 0


# ---------------------------------------------------------------------------------------------
# Metadata: what a file needs to be used on its own
# ---------------------------------------------------------------------------------------------

def write_metadata(path: str, entries: Dict[str, Any]) -> None:
    """Set `van_focal.<key>` = JSON of each value (None values are left out) in the file's metadata_props."""
    import onnx
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    props.update({PREFIX + k: json.dumps(v) for k, v in entries.items() if v is not None})
    onnx.helper.set_model_props(model, props)
    onnx.save(model, path)


def read_metadata(path: str) -> Dict[str, Any]:
    """The `van_focal.*` metadata of an ONNX file, decoded ({} for a file exported elsewhere)."""
    custom = session(path).get_modelmeta().custom_metadata_map
    out = {}
    for key, value in custom.items():
        if key.startswith(PREFIX):
            try:
                out[key[len(PREFIX):]] = json.loads(value)
            except ValueError:
                out[key[len(PREFIX):]] = value
    return out


# ---------------------------------------------------------------------------------------------
# onnxruntime
# ---------------------------------------------------------------------------------------------

def session(path: str, threads: int = None):
    """An onnxruntime CPU session of `path`; a file onnxruntime cannot read gives one line."""
    import onnxruntime
    if not os.path.isfile(path):
        raise UsageError(f'{path}: no such file.')
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise UsageError(f'{path}: onnxruntime cannot load it ({str(e).splitlines()[0]}).') from None


class OnnxClassifier:
    """An exported classifier in onnxruntime, called like the PyTorch model: NCHW float tensor in, logits out."""

    def __init__(self, path: str, threads: int = None):
        self.path, self.session = path, session(path, threads)
        self.input_name = self.session.get_inputs()[0].name
        classes = self.session.get_outputs()[0].shape[-1]
        self.num_classes = classes if isinstance(classes, int) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run_numpy(x.float().contiguous().numpy()))

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def eval(self):
        return self


def predict_setup(path: str, args: argparse.Namespace, given: set) -> Tuple[OnnxClassifier, Dict, List[str]]:
    """The classifier, preprocessing and class names for `python -m van_focal.predict --onnx FILE`: the
    file's metadata, overridden by the preprocessing flags and --class-map given on the command line."""
    model = OnnxClassifier(path)
    meta = read_metadata(path)
    data_config = dict(meta.get('data_config') or {})
    for key in ('interpolation', 'mean', 'std', 'crop_pct', 'crop_mode'):
        if key in given and getattr(args, key, None) not in (None, ''):
            data_config[key] = getattr(args, key)
    if 'input_size' in given and args.input_size:
        data_config['input_size'] = tuple(args.input_size)
    elif 'img_size' in given and args.img_size:
        data_config['input_size'] = (data_config.get('input_size', (3,))[0], args.img_size, args.img_size)
    names = run_info.class_names_from_map(args.class_map) if args.class_map else meta.get('class_names')
    missing = [k for k in DATA_CONFIG_KEYS if k not in data_config and k != 'crop_mode']
    flags = []
    if missing:
        flags.append('--img-size N --mean R G B --std R G B --crop-pct P --interpolation bicubic')
    if not names:
        flags.append('--class-map FILE (one class name a line)')
    if flags:
        raise UsageError(f'{path}: its metadata lacks the {" and ".join(w for w, m in (("preprocessing", missing), ("class names", not names)) if m)} '
                         f'(not written by python -m van_focal.export): pass {" and ".join(flags)}, or re-export it.')
    data_config.setdefault('crop_mode', 'center')
    data_config['input_size'] = tuple(data_config['input_size'])
    for key in ('mean', 'std'):
        data_config[key] = tuple(data_config[key])
    if model.num_classes is not None and len(names) != model.num_classes:
        raise UsageError(f'{len(names)} class names for a model of {model.num_classes} classes: '
                         'give a --class-map with one name per class.')
    return model, data_config, list(names)


def predict_onnx(args: argparse.Namespace, given: set) -> None:
    """`van-focal-predict --onnx FILE.onnx`: the same rows, table, CSV or JSON as with PyTorch."""
    from .predict import classify, image_files
    if args.device not in (None, 'cpu') or args.amp:
        raise UsageError('--onnx runs onnxruntime on the CPU in the precision of the file: drop --device / --amp.')
    path = args.onnx or args.checkpoint
    if not path.endswith('.onnx'):
        raise UsageError(f'--onnx {path}: give an exported FILE.onnx (van-focal-export --out FILE.onnx).')
    model, data_config, names = predict_setup(path, args, given)
    classify(model, image_files(args.inputs), data_config, names, args, torch.device('cpu'))


# ---------------------------------------------------------------------------------------------
# Calibration and check images
# ---------------------------------------------------------------------------------------------

def image_list(folder: str, flag: str) -> List[str]:
    from .predict import image_files
    if not os.path.isdir(folder):
        raise UsageError(f'{flag} {folder}: no such folder.')
    return image_files([folder])


def split_images(calibration_data: str, val_data: str = '', count: int = CALIBRATION_IMAGES,
                 check_count: int = CHECK_IMAGES) -> Tuple[List[str], List[str]]:
    """`count` calibration images drawn (seeded) from `calibration_data`, and up to `check_count` held-out
    images to check the INT8 file on: `val_data`'s, else the rest of `calibration_data`."""
    files = image_list(calibration_data, '--calibration-data') if calibration_data else []
    random.Random(SEED).shuffle(files)
    calibration, rest = files[:count], files[count:]
    if val_data:
        check = image_list(val_data, '--val-data')
        random.Random(SEED).shuffle(check)
    else:
        check = rest
        if calibration_data and not check:
            raise UsageError(f'--calibration-data {calibration_data}: its {len(files)} images all go to calibration '
                             f'(--calibration-images {count}), none is left to check the INT8 model on: pass '
                             '--val-data DIR or a smaller --calibration-images.')
    return calibration, sorted(check[:check_count])


def image_batches(files: List[str], data_config: Dict, mode: str = 'RGB', batch_size: int = 16) -> Iterator[np.ndarray]:
    """The images preprocessed as the model's own (predict's ImageFiles: eval transform), as numpy batches."""
    from timm.data import create_transform
    from .predict import ImageFiles
    transform = create_transform(**{k: data_config[k] for k in DATA_CONFIG_KEYS})
    dataset = ImageFiles(files, transform, mode)
    for start in range(0, len(files), batch_size):
        batch = []
        for i in range(start, min(start + batch_size, len(files))):
            _, image = dataset[i]
            if not isinstance(image, torch.Tensor):  # calibration and check images must all be readable
                raise UsageError(f'{files[i]}: not a readable image ({image}); remove it from the folder.')
            batch.append(image)
        yield torch.stack(batch).numpy()


def folder_labels(files: List[str], names: Optional[List[str]]) -> Optional[np.ndarray]:
    """Class indices from the files' folder names (ImageNet layout), when every folder is a class name."""
    if not names:
        return None
    folders = [os.path.basename(os.path.dirname(f)) for f in files]
    if not folders or not set(folders) <= set(names):
        return None
    return np.array([names.index(f) for f in folders])


# ---------------------------------------------------------------------------------------------
# Quantization
# ---------------------------------------------------------------------------------------------

def float_nodes(path: str) -> Dict[str, List[str]]:
    """The nodes `--int8-float-attention` keeps in float, by kind: Softmax, and MatMuls of two computed tensors
    (attention's q @ k^T and attn @ v; a Linear's MatMul has a weight initializer). Not the default: on a
    trained Focal-fast-T, quantizing them too agreed with float as often or more (docs/deploy_cpu.md)."""
    import onnx
    graph = onnx.load(path, load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == 'Constant' for o in n.output}
    kept = {'Softmax': [n.name for n in graph.node if n.op_type == 'Softmax'],
            'MatMul of two activations': [n.name for n in graph.node if n.op_type == 'MatMul'
                                          and not any(i in constants for i in n.input)]}
    return {kind: nodes for kind, nodes in kept.items() if nodes}


def quantize(float_path: str, int8_path: str, mode: str = 'static', calibration: List[np.ndarray] = None,
             keep_float: bool = False) -> Dict:
    """Write the INT8 version of `float_path` (QDQ, weights int8 per channel, activations uint8 per tensor,
    MinMax-calibrated on `calibration` batches; or `dynamic`), with `float_nodes` kept in float if
    `keep_float` (`--int8-float-attention`). Returns how, for the metadata."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_dynamic, quantize_static)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, 'prepared.onnx')
        # Shape inference and graph clean-up, as onnxruntime advises before quantizing. onnx's shape inference:
        # onnxruntime's symbolic one gives up on some graphs (Focal v1 traced) and took 90x longer on VAN.
        quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
        kept = float_nodes(prepared) if keep_float else {}
        excluded = [n for nodes in kept.values() for n in nodes]
        if mode == 'dynamic':
            # Without the stored intermediate shapes: onnx's shape inference inside quantize_dynamic rejects
            # those of the dynamo-exported Focal-fast (inferred 32 vs stored 3, 768 vs 6).
            import onnx
            model = onnx.load(prepared)
            del model.graph.value_info[:]
            onnx.save(model, prepared)
            quantize_dynamic(prepared, int8_path, weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=['MatMul', 'Gemm'], nodes_to_exclude=excluded)
            how = dict(mode='dynamic', weights='int8 per channel', activations='uint8 per tensor at run time',
                       quantized_ops=['MatMul', 'Gemm'])
        else:
            if not calibration:
                raise UsageError('--int8 static needs calibration images: pass --calibration-data DIR.')

            class Reader(CalibrationDataReader):
                def __init__(self, name: str):
                    self.feeds = iter([{name: batch} for batch in calibration])

                def get_next(self):
                    return next(self.feeds, None)

            reader = Reader(session(prepared).get_inputs()[0].name)
            quantize_static(prepared, int8_path, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded)
            how = dict(mode='static', format='QDQ', weights='int8 per channel', activations='uint8 per tensor',
                       calibration='MinMax', calibration_images=sum(len(b) for b in calibration))
    how['kept_float'] = {kind: len(nodes) for kind, nodes in kept.items()}
    return how


def compare(float_path: str, int8_path: str, batches: List[np.ndarray], labels: Optional[np.ndarray] = None) -> Dict:
    """INT8 vs float on the same inputs: agreement of top-1 predictions, max / mean |logit difference|, and
    top-1 (%) of both when the labels are known."""
    fp, q = OnnxClassifier(float_path), OnnxClassifier(int8_path)
    a = np.concatenate([fp.session.run(None, {fp.input_name: b})[0] for b in batches])
    b = np.concatenate([q.session.run(None, {q.input_name: b})[0] for b in batches])
    diff = np.abs(a - b)
    report = dict(images=int(len(a)), agreement=round(float((a.argmax(1) == b.argmax(1)).mean()), 4),
                  max_logit_diff=round(float(diff.max()), 4), mean_logit_diff=round(float(diff.mean()), 5))
    if labels is not None:
        report.update(top1_float=round(100 * float((a.argmax(1) == labels).mean()), 2),
                      top1_int8=round(100 * float((b.argmax(1) == labels).mean()), 2))
    return report


# ---------------------------------------------------------------------------------------------
# The export's --int8
# ---------------------------------------------------------------------------------------------

def add_int8_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('INT8 (onnxruntime quantization; .onnx files)')
    group.add_argument('--int8', nargs='?', const='static', default=None, choices=MODES,
                       help='also write FILE.int8.onnx: static (calibrated, QDQ; the default) or dynamic')
    group.add_argument('--calibration-data', default='', metavar='DIR',
                       help='image folder to calibrate on (searched recursively); the rest checks the result')
    group.add_argument('--val-data', default='', metavar='DIR', help='check the INT8 file on these images instead')
    group.add_argument('--calibration-images', type=int, default=CALIBRATION_IMAGES, metavar='N',
                       help=f'images drawn from --calibration-data to calibrate on (default {CALIBRATION_IMAGES})')
    group.add_argument('--int8-float-attention', action='store_true',
                       help='keep every Softmax and every MatMul of two activations (attention) in float')
    group.add_argument('--check-images', type=int, default=CHECK_IMAGES, metavar='N',
                       help=f'held-out images the INT8 file is checked on (default at most {CHECK_IMAGES})')


def check_int8_args(args: argparse.Namespace) -> None:
    """One line for a wrong --int8 combination, before anything is exported."""
    if not args.int8:
        for flag in ('calibration_data', 'val_data'):
            if getattr(args, flag):
                raise UsageError(f'--{flag.replace("_", "-")} is for --int8: add --int8, or drop it.')
        return
    if not args.out.endswith('.onnx'):
        raise UsageError(f'--int8 quantizes ONNX files: name --out FILE.onnx (not {args.out}).')
    if args.features:
        raise UsageError('--int8 checks a classifier\'s predictions: drop --features.')
    if args.int8 == 'static' and not args.calibration_data:
        raise UsageError('--int8 static calibrates on your images: pass --calibration-data DIR '
                         '(or use --int8 dynamic, which needs none).')
    if args.calibration_images < 1:
        raise UsageError(f'--calibration-images {args.calibration_images}: give at least 1.')
    for flag in ('calibration_data', 'val_data'):
        folder = getattr(args, flag)
        if folder and not os.path.isdir(folder):
            raise UsageError(f'--{flag.replace("_", "-")} {folder}: no such folder.')


def int8_path(path: str) -> str:
    return path[:-len('.onnx')] + '.int8.onnx'


def export_int8(float_path: str, meta: Dict[str, Any], args: argparse.Namespace) -> Tuple[str, Dict]:
    """Quantize the exported `float_path`, check it, store metadata plus the check in FILE.int8.onnx."""
    data_config = meta['data_config']
    mode = run_info.input_img_mode(argparse.Namespace(input_img_mode=None), data_config)
    calibration_files, check_files = split_images(args.calibration_data, args.val_data, args.calibration_images,
                                                  args.check_images)
    calibration = list(image_batches(calibration_files, data_config, mode)) if args.int8 == 'static' else []
    out = int8_path(float_path)
    how = quantize(float_path, out, args.int8, calibration, getattr(args, 'int8_float_attention', False))
    if check_files:
        how['check'] = dict(compare(float_path, out, list(image_batches(check_files, data_config, mode)),
                                    folder_labels(check_files, meta.get('class_names'))),
                            images_from=args.val_data or f'{args.calibration_data} (not calibrated on)')
    write_metadata(out, dict(meta, int8=how))
    return out, how


def describe(path: str, how: Dict) -> List[str]:
    """The lines the export prints about an INT8 file."""
    lines = [f'{path}: {os.path.getsize(path) / 2 ** 20:.1f} MB, INT8 {how["mode"]} '
             + (f'(QDQ, calibrated on {how["calibration_images"]} images)' if how['mode'] == 'static'
                else '(weights only; activations at run time)')]
    kept = ', '.join(f'{n} {kind}' for kind, n in how['kept_float'].items())
    lines.append(f'  kept in float: {kept or "nothing"}')
    check = how.get('check')
    if check:
        line = (f'  INT8 vs float on {check["images"]} images of {check["images_from"]}: top-1 agreement '
                f'{100 * check["agreement"]:.1f} %, logit difference max {check["max_logit_diff"]:.3g} mean '
                f'{check["mean_logit_diff"]:.3g}')
        if 'top1_float' in check:
            line += f'; top-1 float {check["top1_float"]:.2f} %, INT8 {check["top1_int8"]:.2f} %'
        lines.append(line)
    else:
        lines.append('  not checked against float: pass --val-data DIR (or --calibration-data DIR) to check it')
    return lines


# ---------------------------------------------------------------------------------------------
# The CPU
# ---------------------------------------------------------------------------------------------

def cpu_has_vnni() -> bool:
    """Whether the CPU has 8-bit dot-product instructions (AVX-512 VNNI or AVX-VNNI), which int8 kernels use."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
    except OSError:
        return False
    return bool({'avx512_vnni', 'avx_vnni'} & set(flags))
