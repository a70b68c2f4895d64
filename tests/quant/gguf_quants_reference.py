"""gguf-py's block codecs (gguf.quants, llama.cpp's Python reference) on raw arrays, the oracle for
tests/quant/test_gguf_quants.cpp.

Usage: gguf_quants_reference.py REQUEST.json RESPONSE.json
REQUEST.json: {"dir": str, "cases": [case, ...]} with files relative to dir:
  {"op": "quantize", "type": "Q4_0", "input": f32 file, "shape": [rows, cols], "output": file}
      writes gguf.quants.quantize(x, type) as raw bytes;
  {"op": "dequantize", "type": "Q4_K", "input": u8 file, "shape": [rows, row_bytes], "output": file}
      writes gguf.quants.dequantize(blocks, type) as raw float32.
RESPONSE.json: {"done": number of cases, "gguf_version": str}.
"""
import json
import sys
import warnings
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize


def main(request_path, response_path):
    with open(request_path) as f:
        request = json.load(f)
    base = request["dir"]
    for case in request["cases"]:
        qtype = GGMLQuantizationType[case["type"]]
        src = f"{base}/{case['input']}"
        if case["op"] == "quantize":
            x = np.fromfile(src, dtype=np.float32).reshape(case["shape"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fp16 overflow of a scale is part of some cases
                out = np.ascontiguousarray(quantize(x, qtype)).view(np.uint8)
        else:
            blocks = np.fromfile(src, dtype=np.uint8).reshape(case["shape"])
            out = np.ascontiguousarray(dequantize(blocks, qtype), dtype=np.float32)
        out.tofile(f"{base}/{case['output']}")
    with open(response_path, "w") as f:
        json.dump({"done": len(request["cases"]), "gguf_version": version("gguf")}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
