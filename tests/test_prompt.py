import pytest
from transformers import AutoTokenizer

from convsum.config import DEFAULT_TEMPLATE
from convsum.errors import ConvsumError
from convsum.prompt import IGNORE_INDEX, PromptFormatter, collate


@pytest.fixture
def fmt(tiny_model_dir):
    return PromptFormatter(AutoTokenizer.from_pretrained(tiny_model_dir), DEFAULT_TEMPLATE)


def test_only_summary_and_eos_are_labelled(fmt):
    ex = fmt.build_train("#Person1#: Hello.\n#Person2#: Hi.", "They greet.", 256)
    target = fmt.tokenizer("They greet.", add_special_tokens=False)["input_ids"] + [fmt.eos]
    labelled = [t for t in ex.labels if t != IGNORE_INDEX]
    assert labelled == target and ex.input_ids[-len(target):] == target
    n_prompt = len(ex.input_ids) - len(target)
    assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt and not ex.truncated
    assert ex.labels[-1] == fmt.eos


def test_training_prompt_is_the_inference_prompt(fmt):
    dialogue = "#Person1#: Where is the bank?\n#Person2#: Next to the station."
    ex = fmt.build_train(dialogue, "Someone asks for directions.", 256)
    prompt, _ = fmt.prompt_ids(dialogue, 256)
    assert ex.input_ids[: len(prompt)] == prompt
    assert fmt.tokenizer.decode(prompt, skip_special_tokens=True) == DEFAULT_TEMPLATE.format(dialogue=dialogue)


def test_truncation_cuts_the_dialogue_never_the_summary(fmt):
    long = "#Person1#: " + "I would like a ticket to the station. " * 60
    summary = "Tom wants a ticket and goes to the station."
    ex = fmt.build_train(long, summary, 96)
    target = fmt.tokenizer(summary, add_special_tokens=False)["input_ids"] + [fmt.eos]
    assert ex.truncated and len(ex.input_ids) == 96
    assert ex.input_ids[-len(target):] == target
    assert [t for t in ex.labels if t != IGNORE_INDEX] == target
    assert ex.input_ids[-len(target) - len(fmt.tail): -len(target)] == fmt.tail  # instruction tail kept


def test_summary_too_long_for_max_length_is_an_error(fmt):
    with pytest.raises(ConvsumError, match="raise data.max_length"):
        fmt.build_train("#Person1#: hi", "word " * 200, 64)


def test_template_without_placeholder_is_rejected(tiny_model_dir):
    with pytest.raises(ConvsumError, match="{dialogue}"):
        PromptFormatter(AutoTokenizer.from_pretrained(tiny_model_dir), "Summarize:")


def test_collate_left_pads_and_aligns_labels_at_the_end():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]


def test_collate_rounds_the_padded_length_up_to_a_bucket():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    batch = collate(rows, 0, multiple=4)
    assert batch["input_ids"].tolist() == [[0, 5, 6, 7], [0, 0, 8, 9]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7], [-100, -100, -100, 9]]
    assert batch["position_ids"].tolist() == [[0, 0, 1, 2], [0, 0, 0, 1]]
    assert collate(rows, 0, multiple=3)["input_ids"].shape == (2, 3)  # already a multiple: unchanged


def test_chat_format_uses_the_tokenizer_template_and_ends_at_end_of_turn(tiny_chat_model_dir):
    from convsum.modeling import load_tokenizer
    from convsum.config import ModelConfig, DEFAULT_TEMPLATE

    tok = load_tokenizer(ModelConfig(name=str(tiny_chat_model_dir)))
    fmt = PromptFormatter(tok, DEFAULT_TEMPLATE, "chat")
    dialogue = "#Person1#: Hello, I am Tom.\n#Person2#: Hi Tom."
    ids, truncated = fmt.prompt_ids(dialogue, 512)
    rendered = tok.apply_chat_template([{"role": "user", "content": DEFAULT_TEMPLATE.format(dialogue=dialogue)}],
                                       tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == rendered and not truncated
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert fmt.eos == eot and fmt.stop_ids == [eot, tok.eos_token_id]
    ex = fmt.build_train(dialogue, "Tom says hello.", 256)
    learned = [t for t in ex.labels if t != -100]
    assert learned[-1] == eot and tok.decode(learned[:-1]) == "Tom says hello."


def test_chat_format_needs_a_chat_template(tiny_model_dir):
    from convsum.modeling import load_tokenizer
    from convsum.config import ModelConfig, DEFAULT_TEMPLATE

    with pytest.raises(ConvsumError, match="no chat template"):
        PromptFormatter(load_tokenizer(ModelConfig(name=str(tiny_model_dir))), DEFAULT_TEMPLATE, "chat")
