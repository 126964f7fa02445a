"""Tokenized splits cached on disk (adarank/cache.py): a second run reads what the first
wrote, the same rows as tokenizing again; any change to the rows, the tokenizer or the settings
is a new entry; an unwritable cache folder only turns the cache off."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import QUICK, run_task
from fixtures.glue import write_sst2_folder
from transformers import AutoTokenizer

from adarank import cache as token_cache
from adarank.arguments import parse_arguments
from adarank.errors import UsageError
from adarank.tasks import TASKS
from adarank.tasks.glue.data import load_glue, tokenize


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADARANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ADARANK_TOKEN_CACHE", raising=False)
    return tmp_path / "cache" / "tokenized"


def sst2(tmp_path):
    return load_glue(TASKS["sst2"], str(write_sst2_folder(tmp_path / "glue")))


def test_a_second_tokenization_reads_the_first_and_gives_the_same_rows(tiny_model, tmp_path, cache, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = sst2(tmp_path)
    first = tokenize(data, tokenizer, 64)
    second = tokenize(data, tokenizer, 64)
    assert first.tokenized_cache == {"train": "written", "validation": "written"}
    assert second.tokenized_cache == {"train": "read", "validation": "read"}
    assert len(list(cache.iterdir())) == 2
    monkeypatch.setenv("ADARANK_TOKEN_CACHE", "0")
    fresh = tokenize(data, tokenizer, 64)
    assert fresh.tokenized_cache == {"train": "off", "validation": "off"}
    assert second.train.to_list() == fresh.train.to_list()
    assert second.dev["validation"].to_list() == fresh.dev["validation"].to_list()
    assert len(list(cache.iterdir())) == 2  # nothing written while off


def test_other_rows_tokenizer_or_settings_make_new_entries(tiny_model, tmp_path, cache):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = sst2(tmp_path)
    entries = lambda: len(list(cache.iterdir()))  # noqa: E731
    tokenize(data, tokenizer, 64)
    assert entries() == 2
    # A shorter maximum length truncates: a new entry, and truncated rows.
    short = tokenize(data, tokenizer, 8)
    assert short.tokenized_cache["train"] == "written" and entries() == 4
    assert max(len(ids) for ids in short.train["input_ids"]) == 8
    # Other rows: a subset drawn from the file, and a contiguous slice of it (the same Arrow buffers).
    for subset in (data.train.select(range(10)), data.train.select(range(10, 20)), data.train.shuffle(seed=1)):
        _, status = token_cache.tokenized(subset, lambda b: tokenizer(b["text_a"]), tokenizer, {"max_seq_length": 64},
                                          remove_columns=subset.column_names)
        assert status == "written"
    # One changed sentence.
    edited = data.train.map(lambda row, i: {"text_a": row["text_a"] + ("!" if i == 3 else "")}, with_indices=True)
    assert token_cache.content_hash(edited) != token_cache.content_hash(data.train)
    # Another tokenizer: an added token changes what the same text becomes.
    other = AutoTokenizer.from_pretrained(tiny_model)
    other.add_tokens(["movie"])
    assert token_cache.tokenizer_identity(other) != token_cache.tokenizer_identity(tokenizer)
    assert tokenize(data, other, 64).tokenized_cache["train"] == "written"


def test_an_unwritable_cache_folder_turns_the_cache_off_and_the_rows_are_still_right(tiny_model, tmp_path,
                                                                                     monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ADARANK_CACHE", str(blocker))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = sst2(tmp_path)
    rows = tokenize(data, tokenizer, 64)
    assert rows.tokenized_cache == {"train": "off", "validation": "off"}
    assert rows.train[0]["input_ids"] == tokenizer(data.train[0]["text_a"])["input_ids"]


def test_a_run_records_the_cache_and_a_second_run_reading_it_trains_identically(tiny_model, tmp_path, cache):
    data = write_sst2_folder(tmp_path / "glue")
    common = ("--data_dir", str(data), "--model_name_or_path", tiny_model, "--max_steps", "3", "--seed", "3",
              "--no_bf16", *QUICK)
    for name in ("first", "second"):
        assert run_task("sst2", *common, "--output_dir", str(tmp_path / name)) == 0
    first, second = (json.loads((tmp_path / n / "config.json").read_text()) for n in ("first", "second"))
    assert first["tokenized_cache"] == {"train": "written", "validation": "written"}
    assert second["tokenized_cache"] == {"train": "read", "validation": "read"}
    losses = [[json.loads(line).get("loss") for line in (tmp_path / n / "history.jsonl").read_text().splitlines()]
              for n in ("first", "second")]
    assert losses[0] == losses[1] and any(loss is not None for loss in losses[0])
    assert (tmp_path / "first" / "predictions.tsv").read_text() == (tmp_path / "second" / "predictions.tsv").read_text()


def test_an_empty_split_is_tokenized_but_not_cached(tiny_model, cache):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    empty = datasets.Dataset.from_dict({"text_a": [], "label": []},
                                       features=datasets.Features({"text_a": datasets.Value("string"),
                                                                   "label": datasets.Value("int64")}))
    rows, status = token_cache.tokenized(empty, lambda b: tokenizer(b["text_a"]), tokenizer, {},
                                         remove_columns=["text_a", "label"])
    assert status == "empty" and len(rows) == 0 and not cache.exists()


def _overwrite_middle(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))


def test_the_cache_switch_takes_the_usual_words_and_refuses_others(monkeypatch):
    for value, on in (("0", False), ("OFF", False), ("False", False), ("no", False), ("1", True), ("Yes", True),
                      ("on", True)):
        monkeypatch.setenv("ADARANK_TOKEN_CACHE", value)
        assert token_cache.enabled() is on, value
    monkeypatch.setenv("ADARANK_TOKEN_CACHE", "disabled")  # it stayed on, silently
    with pytest.raises(UsageError, match="ADARANK_TOKEN_CACHE='disabled': set it to 0 .off. or 1 .on., or unset it"):
        token_cache.enabled()
    with pytest.raises(UsageError, match="ADARANK_TOKEN_CACHE='disabled'"):  # before anything is loaded
        parse_arguments(TASKS["sst2"], ["--demo"])


def test_files_beside_an_entrys_own_are_not_damage(tiny_model, tmp_path, cache):
    """A later map's cache file in the entry's folder made every read a rewrite."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = sst2(tmp_path)
    tokenize(data, tokenizer, 64)
    for entry in cache.iterdir():
        (entry / "cache-0123.arrow").write_bytes(b"not the entry's")
    assert tokenize(data, tokenizer, 64).tokenized_cache == {"train": "read", "validation": "read"}


@pytest.mark.parametrize("damage", [
    lambda entry: (entry / "state.json").write_text("[1, 2]"),  # valid JSON of the wrong shape
    lambda entry: (entry / "state.json").write_text('{"_data_files": "x"}'),
    lambda entry: (entry / "dataset_info.json").write_text("{not json"),
    lambda entry: [f.unlink() for f in entry.glob("*.arrow")],
    # Bytes overwritten inside the rows, the file's structure intact: read as it was, it gave token ids
    # past the vocabulary (an IndexError in training) or, where they stayed in it, other tokens silently.
    lambda entry: [_overwrite_middle(f) for f in entry.glob("*.arrow")],
    lambda entry: (entry / token_cache.CHECKSUMS).unlink(),  # an entry of an earlier version, unverifiable
], ids=["state-list", "state-wrong-field", "info-not-json", "arrow-missing", "arrow-bytes", "no-checksums"])
def test_a_damaged_entry_is_tokenized_again_and_rewritten(tiny_model, tmp_path, cache, damage):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = sst2(tmp_path)
    rows = tokenize(data, tokenizer, 64).train.to_list()  # before the damage: the rows are memory-mapped
    for entry in cache.iterdir():
        damage(entry)
    again = tokenize(data, tokenizer, 64)
    assert again.tokenized_cache == {"train": "written", "validation": "written"}
    assert again.train.to_list() == rows
    assert tokenize(data, tokenizer, 64).tokenized_cache == {"train": "read", "validation": "read"}
