#!/usr/bin/env python3
"""Weight bytes one decoded token reads from a GGUF file: every tensor once, except the token
embedding (one row; also the output matrix when the file has no `output.weight`) and the
routed experts (`*_exps`: expert_used_count of expert_count). Prints the figure in bytes.

    bytes_per_token.py FILE.gguf [N]    (needs the `gguf` package: bench/requirements.txt)

With N, the bytes one decode step of N sequences reads (one token each, one step): embedding
rows N times, routed experts by the expected number of distinct experts N tokens pick when
each picks k of E uniformly at random, E * (1 - (1 - k/E)^N), everything else once.
"""
import sys

from gguf import GGUFReader


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    r = GGUFReader(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) == 3 else 1

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
            total += n * b // int(t.shape[-1])  # one row per sequence
            if "output.weight" not in names:
                total += b  # tied: also the output matrix
        elif "_exps" in t.name:
            total += int(b * (1 - (1 - used / experts) ** n))
        else:
            total += b
    print(total)


if __name__ == "__main__":
    main()
