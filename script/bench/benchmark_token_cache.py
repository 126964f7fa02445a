"""Seconds to tokenize GLUE tasks with the embedded model's tokenizer: without the cache, on a
first run (tokenize and write the cache) and on every later run (read it); the rows read are
checked to equal the rows tokenized.

    python script/bench/benchmark_token_cache.py [--data_dir ../shared/data/glue_data] [--tasks sst2 cola rte]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from transformers import AutoTokenizer  # noqa: E402

from adarank.tasks.glue.data import load_glue, tokenize  # noqa: E402
from adarank.loading import embedded_model_path  # noqa: E402
from adarank.tasks import TASKS  # noqa: E402


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="../shared/data/glue_data")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cola", "rte"])
    parser.add_argument("--max_seq_length", type=int, default=128)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    print("task\texamples\tno cache s\tfirst run (write) s\tlater run (read) s\tno cache / read")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["ADARANK_CACHE"] = cache
        for name in args.tasks:
            data = load_glue(TASKS[name], args.data_dir)
            os.environ["ADARANK_TOKEN_CACHE"] = "0"
            plain, plain_s = timed(lambda: tokenize(data, tokenizer, args.max_seq_length))
            os.environ["ADARANK_TOKEN_CACHE"] = "1"
            written, write_s = timed(lambda: tokenize(data, tokenizer, args.max_seq_length))
            read, read_s = timed(lambda: tokenize(data, tokenizer, args.max_seq_length))
            assert set(written.tokenized_cache.values()) == {"written"}, written.tokenized_cache
            assert set(read.tokenized_cache.values()) == {"read"}, read.tokenized_cache
            assert read.train.to_dict() == plain.train.to_dict(), f"{name}: the cached rows differ"
            examples = len(data.train) + sum(len(d) for d in data.dev.values())
            print(f"{name}\t{examples}\t{plain_s:.2f}\t{write_s:.2f}\t{read_s:.3f}\t{plain_s / read_s:.0f}x")


if __name__ == "__main__":
    main()
