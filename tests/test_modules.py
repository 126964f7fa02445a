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
        ("0", "query"), ("0", "key"), ("0", "value"), ("0", "attention.output"), ("0", "intermediate"), ("0", "output")]
    assert not any("pooler" in n for n in names)
    assert head_modules(bert) == ["pooler", "classifier"]


def test_a_subset_by_paper_name_or_module_name(bert):
    names = resolve_target_modules(bert, "query,attention.self.value")
    assert [locate(n) for n in names] == [("0", "query"), ("0", "value"), ("1", "query"), ("1", "value")]


def test_an_unknown_target_module_names_the_choices(bert):
    with pytest.raises(UsageError, match="'q_proj', which matches no module.*intermediate"):
        resolve_target_modules(bert, "q_proj")


def test_names_are_located_in_peft_and_rank_pattern_spellings():
    assert locate("base_model.model.bert.encoder.layer.3.output.dense.lora_E.default") == ("3", "output")
    assert locate("deberta.encoder.layer.11.attention.self.query_proj") == ("11", "query")
    assert locate("bert.pooler.dense") is None


def test_generator_names_are_located_with_their_stack():
    assert locate("base_model.model.model.layers.7.mlp.gate_proj.lora_A.default") == ("7", "gate_proj")
    assert locate("model.layers.0.self_attn.o_proj") == ("0", "o_proj")
    assert locate("model.encoder.layers.2.self_attn.out_proj") == ("encoder.2", "out_proj")
    assert locate("model.decoder.layers.2.encoder_attn.q_proj.lora_E.default") == ("decoder.2", "encoder_attn.q_proj")
    assert locate("model.decoder.layers.11.fc2") == ("decoder.11", "fc2")
    assert locate("decoder.block.1.layer.1.EncDecAttention.q") == ("decoder.1", "EncDecAttention.q")
    assert locate("encoder.block.0.layer.1.DenseReluDense.wo") == ("encoder.0", "wo")
    assert locate("lm_head") is None and locate("model.encoder.layernorm_embedding") is None


def test_target_modules_of_a_bart_and_a_llama_model():
    from fixtures.models import tiny_bart, tiny_llama

    bart = tiny_bart(64, d_model=16, heads=2, positions=32)
    names = resolve_target_modules(bart)
    assert len(names) == 2 * 6 + 2 * 10  # decoder layers add the four cross-attention matrices
    assert [locate(n)[0] for n in names[::6]][:2] == ["encoder.0", "encoder.1"]
    assert locate(names[-1]) == ("decoder.1", "fc2")
    # "q_proj" names the query of self- and cross-attention, as the authors' --lora_module does
    assert [locate(n)[1] for n in resolve_target_modules(bart, "q_proj") if "decoder.layers.0." in n] == [
        "q_proj", "encoder_attn.q_proj"]
    llama = tiny_llama(64, hidden_size=16, heads=2, kv_heads=1)
    assert [locate(n)[1] for n in resolve_target_modules(llama)[:7]] == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert head_modules(llama) == [] and head_modules(bart) == []
