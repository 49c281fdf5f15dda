#!/usr/bin/env python3
"""Weight bytes one decoded token reads from a GGUF file: every tensor once, except the token
embedding (one row; also the output matrix when the file has no `output.weight`) and the
routed experts (`*_exps`: expert_used_count of expert_count). Prints the figure in bytes.

    bytes_per_token.py FILE.gguf        (needs the `gguf` package: bench/requirements.txt)
"""
import sys

from gguf import GGUFReader


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    r = GGUFReader(sys.argv[1])

    def scalar(key):
        f = r.fields.get(key)
        return None if f is None else int(f.parts[f.data[0]][0])

    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    used, experts = scalar(f"{arch}.expert_used_count"), scalar(f"{arch}.expert_count")
    names = {t.name for t in r.tensors}
    total = 0
    for t in r.tensors:
        b = int(t.n_bytes)
        if t.name == "token_embd.weight":
            total += b // int(t.shape[-1])  # one row
            if "output.weight" not in names:
                total += b  # tied: also the output matrix
        elif "_exps" in t.name:
            total += b * used // experts
        else:
            total += b
    print(total)


if __name__ == "__main__":
    main()
