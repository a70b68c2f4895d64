"""The Python side of the GGUF container tests: writes files with gguf-py's GGUFWriter and reads
files back with its GGUFReader, the reference implementation of FORMATS.md §6. One process per call.

Usage: gguf_reference.py REQUEST.json RESPONSE.json
REQUEST: {"write": [{"path", "kv": [{"key", "type", "elem_type"?, "value"}],
                     "tensors": [{"name", "type", "ne", "hex"}]}],
          "read": [path], "types": [ggml type id]}
  Value and tensor types are spelled as the enums (UINT32, ARRAY, Q8_0, ...). The first kv must be
  general.architecture (GGUFWriter adds it itself); general.alignment goes through add_custom_alignment.
  Tensors of F32/F16/I32 are passed typed, every other type as raw bytes with raw_dtype.
RESPONSE: {"read": [{"version", "alignment", "fields": [{"key", "types", "value"}],
                     "tensors": [{"name", "type", "shape", "n_bytes", "data_offset", "data_shape", "hex"}]}
                    or {"error": str}],
           "types": [{"id", "name", "block_size", "type_size"}] (GGML_QUANT_SIZES)}
"""
import json
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

TYPED = {"F32": np.float32, "F16": np.float16, "I32": np.int32}


def write(spec):
    kv = spec["kv"]
    assert kv[0]["key"] == "general.architecture"
    w = GGUFWriter(spec["path"], kv[0]["value"])
    for item in kv[1:]:
        if item["key"] == "general.alignment":
            w.add_custom_alignment(item["value"])
            continue
        sub = GGUFValueType[item["elem_type"]] if item["type"] == "ARRAY" else None
        w.add_key_value(item["key"], item["value"], GGUFValueType[item["type"]], sub_type=sub)
    for t in spec["tensors"]:
        raw = bytes.fromhex(t["hex"])
        numpy_shape = list(reversed(t["ne"]))
        if t["type"] in TYPED:
            w.add_tensor(t["name"], np.frombuffer(raw, dtype=TYPED[t["type"]]).reshape(numpy_shape))
        else:
            qtype = GGMLQuantizationType[t["type"]]
            numpy_shape[-1] = len(raw) // max(1, int(np.prod(numpy_shape[:-1])))
            w.add_tensor(t["name"], np.frombuffer(raw, dtype=np.uint8).reshape(numpy_shape), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read(path):
    try:
        r = GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - the C++ side asserts on the message
        return {"error": f"{type(e).__name__}: {e}"}
    fields = [{"key": k, "types": [t.name for t in f.types], "value": f.contents()}
              for k, f in r.fields.items() if not k.startswith("GGUF.")]
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape],
                "n_bytes": int(t.n_bytes), "data_offset": int(t.data_offset),
                "data_shape": [int(d) for d in t.data.shape], "hex": t.data.tobytes().hex()}
               for t in r.tensors]
    version = int(r.fields["GGUF.version"].contents())
    return {"version": version, "alignment": int(r.alignment), "fields": fields, "tensors": tensors}


def main():
    request = json.load(open(sys.argv[1]))
    for spec in request.get("write", []):
        write(spec)
    response = {"read": [read(p) for p in request.get("read", [])]}
    response["types"] = []
    for i in request.get("types", []):
        t = GGMLQuantizationType(i)
        block_size, type_size = GGML_QUANT_SIZES[t]
        response["types"].append({"id": i, "name": t.name, "block_size": block_size, "type_size": type_size})
    with open(sys.argv[2], "w") as f:
        json.dump(response, f)


if __name__ == "__main__":
    main()
