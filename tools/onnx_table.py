"""Markdown table of `benchmark.py --onnx` results, from its --results-file CSVs or its printed output:

    python tools/onnx_table.py van.csv focal.log
"""
import csv
import re
import sys

INFER = re.compile(r'^(\S+)\s+infer\s+([\d.]+) img/s')
ONNX = re.compile(r'^\s+onnx\s+([\d.]+) img/s.*?  ([\d.]+) MB, dynamic (.*?), max relative difference ([\d.e+-]+) \((.*)\)')


def rows_from_output(path):
    lines = open(path).read().splitlines()
    for line, following in zip(lines, lines[1:]):
        infer, onnx = INFER.match(line), ONNX.match(following)
        if infer and onnx:
            yield dict(model=infer.group(1), img_per_sec=infer.group(2), onnx_img_per_sec=onnx.group(1),
                       onnx_mb=onnx.group(2), onnx_dynamic=onnx.group(3), onnx_max_rel_diff=onnx.group(4),
                       onnx_checked=onnx.group(5))


def main(paths):
    print('| model | exporter | dynamic | file MB | max. relative difference (inputs checked) '
          '| onnxruntime img/s | PyTorch eager img/s | ratio |')
    print('| --- | --- | --- | ---: | --- | ---: | ---: | ---: |')
    for path in paths:
        rows = csv.DictReader(open(path)) if path.endswith('.csv') else rows_from_output(path)
        for r in rows:
            ratio = float(r['onnx_img_per_sec']) / float(r['img_per_sec'])
            print(f"| {r['model']} | torch.onnx dynamo | {r['onnx_dynamic']} | {float(r['onnx_mb']):.0f} "
                  f"| {float(r['onnx_max_rel_diff']):.1e} ({r['onnx_checked'].replace(' ', ', ')}) "
                  f"| {float(r['onnx_img_per_sec']):.2f} | {float(r['img_per_sec']):.2f} | {ratio:.2f}× |")


if __name__ == '__main__':
    main(sys.argv[1:])
