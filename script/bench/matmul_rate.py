"""The machine's matmul rate in fp32 and bf16, at the embedded MiniLM's shapes: the ceiling a
training run is measured against, and whether bf16 pays on this CPU.

    python script/bench/matmul_rate.py [--threads N] [--repeats 50]
"""

from __future__ import annotations

import torch

from bench_cli import at_least, command_line, exits_cleanly_on_usage_errors, threads_at_most
from matmul import product_seconds

# (tokens, in, out): a batch of 32 sequences of 64 tokens through MiniLM's attention and FFN matrices.
SHAPES = ((2048, 384, 384), (2048, 384, 1536), (2048, 1536, 384))


def rate(m: int, k: int, n: int, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of an (m x k) @ (k x n) product on the CPU, over the median of ``repeats`` timings."""
    return 2 * m * k * n / product_seconds(m, k, n, dtype, repeats) / 1e9


@exits_cleanly_on_usage_errors
def main(argv: list[str] | None = None) -> None:
    parser = command_line(__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=50, help="timings of each product; the median is kept")
    args = parser.parse_args(argv)
    at_least(1, threads=args.threads, repeats=args.repeats)
    threads_at_most("threads", [args.threads])
    torch.set_num_threads(args.threads)
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, AVX512-BF16 "
          f"{torch.cpu._is_avx512_bf16_supported()}, AMX {torch.cpu._is_amx_tile_supported()}, "
          f"{args.threads} thread(s)")
    print("shape (tokens x in -> out)\tfp32 GFLOP/s\tbf16 GFLOP/s\tbf16 / fp32")
    for m, k, n in SHAPES:
        fp32, bf16 = rate(m, k, n, torch.float32, args.repeats), rate(m, k, n, torch.bfloat16, args.repeats)
        print(f"{m} x {k} -> {n}\t{fp32:.0f}\t{bf16:.0f}\t{bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
