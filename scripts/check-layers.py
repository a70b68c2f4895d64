#!/usr/bin/env python3
# Fails when a file includes a higher layer (docs STYLE.md, habit 1): util → io → ops →
# model/tokenizer → quant/peft → data → train → pipelines → cli, with kernels/ reached only from ops/.
#   scripts/check-layers.py [ROOT]     check the tree at ROOT (default: this repository)
#   scripts/check-layers.py --self-test   check that the checker catches what it must
import re
import sys
import tempfile
from pathlib import Path

# Rank of each layer: a file may include its own rank or lower. kernels/ sits between io and ops:
# it may use util/io, and only ops may include it.
RANKS = {"util": 0, "io": 1, "kernels": 1.5, "ops": 2, "model": 3, "tokenizer": 3, "quant": 4, "peft": 4,
         "data": 5, "train": 6, "pipelines": 7, "serve": 7.5, "cli": 8}
ORDER = "util → io → ops → model/tokenizer → quant/peft → data → train → pipelines → serve → cli"
INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.MULTILINE)
SOURCE_SUFFIXES = {".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh"}


def layer_of(path: Path, root: Path):
    """The layer a file of the tree belongs to, or None (generated and third-party files)."""
    parts = path.relative_to(root).parts
    if parts[0] == "src" and len(parts) > 2:
        return parts[1]
    if parts[:2] == ("include", "llmtune") and len(parts) > 3:
        return parts[2]
    if parts[0] == "kernels":
        return "kernels"
    return None


def target_layer(include: str, including: Path, root: Path):
    """The layer an include resolves to: llmtune/<layer>/..., a path relative to the including file,
    or a kernels/ header found through the kernels include directory."""
    m = re.match(r"llmtune/([^/]+)/", include)
    if m:
        return m.group(1)
    candidate = (including.parent / include).resolve()
    if candidate.exists():
        try:
            return layer_of(candidate, root.resolve())
        except ValueError:  # outside the tree
            return None
    if (root / "kernels" / include).exists():
        return "kernels"
    return None


def check(root: Path):
    problems = []
    files = [p for d in ("src", "include", "kernels") for p in sorted((root / d).rglob("*"))
             if p.suffix in SOURCE_SUFFIXES and p.is_file()]
    for path in files:
        layer = layer_of(path, root)
        if layer not in RANKS:
            if layer is not None:
                problems.append(f"{path.relative_to(root)}: unknown layer '{layer}' (known: {', '.join(RANKS)})")
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in INCLUDE.finditer(text):
            target = target_layer(m.group(1), path, root)
            if target is None or target == layer:
                continue
            line = text.count("\n", 0, m.start()) + 1
            where = f"{path.relative_to(root)}:{line}: #include \"{m.group(1)}\""
            if target not in RANKS:
                problems.append(f"{where}: unknown layer '{target}'")
            elif target == "kernels" and layer != "ops":
                problems.append(f"{where}: kernels/ is reached only through ops/ (use llmtune/ops/runtime.h or an op)")
            elif layer != "cli" and RANKS[target] > RANKS[layer]:
                problems.append(f"{where}: {layer} includes the higher layer {target} (order: {ORDER})")
    return problems, len(files)


def self_test():
    """A tree with one allowed include of each kind and one violation of each kind."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = {
            "include/llmtune/util/a.h": '#include "llmtune/io/b.h"\n',                 # util → io: violation
            "include/llmtune/io/b.h": '#include "llmtune/util/a.h"\n',                 # io → util: fine
            "src/train/x.cpp": '#include "../../kernels/k.h"\n',                       # kernels outside ops
            "src/ops/y.cpp": '#include "../../kernels/k.h"\n#include "k.h"\n',         # fine
            "src/data/z.cpp": '#include "detail.h"\n#include "llmtune/pipelines/p.h"\n',  # relative fine; pipelines: violation
            "src/data/detail.h": "",
            "src/cli/main.cpp": '#include "llmtune/pipelines/p.h"\n#include "llmtune/util/a.h"\n',  # cli: anything
            "src/model/w.cpp": '#include "llmtune/tokenizer/t.h"\n',                   # same rank: fine
            "src/io/v.cpp": '  #  include "llmtune/model/w.h"\n',                      # spacing still caught
            "kernels/k.h": '#include "llmtune/util/a.h"\n',
        }
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        problems, _ = check(root)
        expected = ["include/llmtune/util/a.h:1", "src/train/x.cpp:1", "src/data/z.cpp:2", "src/io/v.cpp:1"]
        found = [p.split(": #include")[0] for p in problems]
        if sorted(found) != sorted(expected):
            print("check-layers self-test FAILED\nexpected:", expected, "\nfound:", *problems, sep="\n  ")
            return 1
    print("check-layers self-test: the four planted violations are found, the allowed includes pass")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    problems, n = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"check-layers: {len(problems)} include(s) break the layer order ({ORDER})")
        return 1
    print(f"check-layers: {n} files, every include follows {ORDER}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
