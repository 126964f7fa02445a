"""Seconds to tokenize GLUE tasks with the embedded model's tokenizer: without the cache, on a
first run (tokenize and write the cache) and on every later run (read it); the rows read are
checked to equal the rows tokenized.

    python script/bench/benchmark_token_cache.py [--data_dir ../shared/data/glue_data] [--tasks sst2 cola rte]
"""

from __future__ import annotations

import os
import tempfile
import time

from bench_cli import at_least, command_line, exits_cleanly_on_usage_errors  # first: it puts src/ on the path
from transformers import AutoTokenizer

from adarank.loading import embedded_model_path
from adarank.tasks import TASKS
from adarank.tasks.glue.data import load_glue, tokenize
from adarank.tasks.glue.task import GlueTask

GLUE_TASKS = [name for name, task in TASKS.items() if isinstance(task, GlueTask)]


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


@exits_cleanly_on_usage_errors
def main(argv: list[str] | None = None) -> None:
    parser = command_line(__doc__)
    parser.add_argument("--data_dir", default="../shared/data/glue_data")
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cola", "rte"], choices=GLUE_TASKS, metavar="TASK",
                        help=f"GLUE tasks: {' '.join(GLUE_TASKS)}")
    parser.add_argument("--max_seq_length", type=int, default=128)
    args = parser.parse_args(argv)
    at_least(1, max_seq_length=args.max_seq_length)
    datas = {name: load_glue(TASKS[name], args.data_dir) for name in args.tasks}  # a missing file: before any timing
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path())
    print("task\texamples\tno cache s\tfirst run (write) s\tlater run (read) s\tno cache / read")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["ADARANK_CACHE"] = cache
        for name, data in datas.items():
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
