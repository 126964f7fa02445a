import pytest
from transformers import AutoModelForSequenceClassification

from adarank.errors import UsageError
from adarank.modules import head_modules, locate, resolve_target_modules


@pytest.fixture(scope="module")
def bert(tiny_model):
    return AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)


def test_all_six_matrices_of_every_layer_and_not_the_pooler(bert):
    names = resolve_target_modules(bert)
    assert len(names) == 2 * 6
    assert [locate(n) for n in names[:6]] == [
        (0, "query"), (0, "key"), (0, "value"), (0, "attention.output"), (0, "intermediate"), (0, "output")]
    assert not any("pooler" in n for n in names)
    assert head_modules(bert) == ["pooler", "classifier"]


def test_a_subset_by_paper_name_or_module_name(bert):
    names = resolve_target_modules(bert, "query,attention.self.value")
    assert [locate(n) for n in names] == [(0, "query"), (0, "value"), (1, "query"), (1, "value")]


def test_an_unknown_target_module_names_the_choices(bert):
    with pytest.raises(UsageError, match="'q_proj', which matches no module.*intermediate"):
        resolve_target_modules(bert, "q_proj")


def test_names_are_located_in_peft_and_rank_pattern_spellings():
    assert locate("base_model.model.bert.encoder.layer.3.output.dense.lora_E.default") == (3, "output")
    assert locate("deberta.encoder.layer.11.attention.self.query_proj") == (11, "query")
    assert locate("bert.pooler.dense") is None
