"""The CPU training fast path (convsum/fastpath.py): the same loss as the stock modules, or the same
dropout distribution."""

import os
from pathlib import Path

import pytest
import torch

from convsum import fastpath, train
from convsum.modeling import add_lora, load_model, load_tokenizer
from convsum.prompt import collate


def _model_and_batch(cfg, dropout=0.0):
    cfg.lora.dropout = dropout
    tok = load_tokenizer(cfg.model)
    _, exs, _, _ = train.prepare_examples(cfg, tok)
    torch.manual_seed(0)
    model = add_lora(load_model(cfg.model, for_training=True), cfg.lora)
    for p in model.parameters():  # non-zero LoRA B so gradients flow through both factors
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return model, collate(exs[:6], tok.pad_token_id)


def _loss_and_grads(cfg, model, batch):
    trainer = train.SummaryTrainer(model=model, args=train.training_arguments(
        cfg, Path(cfg.train.output_dir), False, True))
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=(batch["labels"] != -100).sum())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_frozen_weights_cast_once_give_the_identical_autocast_loss_and_gradients(tiny_cfg):
    model, batch = _model_and_batch(tiny_cfg)
    model.train()
    loss_stock, grads_stock = _loss_and_grads(tiny_cfg, model, batch)
    n_linear = sum(isinstance(m, torch.nn.Linear) and not m.weight.requires_grad for m in model.modules())
    assert fastpath.cast_frozen_linears(model) == n_linear
    loss_fast, grads_fast = _loss_and_grads(tiny_cfg, model, batch)
    # Autocast rounds fp32 weights to bf16 on every use; rounding them once gives the same operands.
    assert loss_fast == loss_stock
    for name in grads_stock:
        torch.testing.assert_close(grads_fast[name], grads_stock[name], rtol=0, atol=0)
    # The embedding lookup and the trainable LoRA weights stay fp32; the tied head is a bf16 copy.
    inner = model.get_base_model()
    assert inner.get_input_embeddings().weight.dtype == torch.float32
    assert inner.lm_head.weight.dtype == torch.bfloat16 and not inner.lm_head.weight.requires_grad
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_fast_lora_dropout_replaces_every_peft_dropout_and_is_identity_in_eval(tiny_cfg):
    model, batch = _model_and_batch(tiny_cfg, dropout=0.1)
    peft_dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p == 0.1]
    assert peft_dropouts and fastpath.use_fast_lora_dropout(model) == len(peft_dropouts)
    assert not any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in model.modules())
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        again = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(out, again, rtol=0, atol=0)


def test_lora_dropout_has_the_inverted_dropout_distribution():
    p = 0.05
    d = fastpath.LoraDropout(p).train()
    assert d.keep_probability() == pytest.approx(1 - p, abs=1 / 65536)
    x = torch.full((4, 1000, 640), 2.0)
    y = d(x)
    kept = y != 0
    # 2.56M Bernoulli draws: the standard error of the kept fraction is 1.4e-4.
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=1e-3)
    assert torch.all(y[kept] == 2.0 / d.keep_probability())  # inverted scaling: the expectation is unchanged
    assert y.mean().item() == pytest.approx(2.0, rel=2e-3)
    # No structure in the mask: each of the 4 int16 lanes of a 64-bit draw and each feature keeps ~1 - p.
    lanes = kept.reshape(-1, 4).float().mean(0)
    assert torch.all((lanes - (1 - p)).abs() < 2e-3)
    assert (kept.float().mean((0, 1)) - (1 - p)).abs().max() < 0.03


def test_lora_dropout_is_seeded_by_torch_and_masks_the_gradient():
    d = fastpath.LoraDropout(0.3).train()
    x = torch.randn(3, 7, 5, requires_grad=True)  # odd element count: not a multiple of 4
    torch.manual_seed(1)
    y1 = d(x)
    torch.manual_seed(1)
    y2 = d(x)
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, d(x))  # the generator advanced
    y1.sum().backward()
    expected = (y1 != 0).float() / d.keep_probability()
    torch.testing.assert_close(x.grad, expected, rtol=1e-6, atol=0)
    assert torch.equal(fastpath.LoraDropout(0.3).eval()(x), x)
    assert torch.equal(fastpath.LoraDropout(0.0).train()(x), x)


def test_build_trainer_casts_to_bf16_only_for_cpu_bf16_and_fuses_dropout_on_any_cpu(tiny_cfg, tmp_path):
    tok = load_tokenizer(tiny_cfg.model)
    _, exs, _, _ = train.prepare_examples(tiny_cfg, tok)
    # (bf16, fast path on, expect fused dropout, expect bf16 head)
    for bf16, fast, dropout, cast in ((True, True, True, True), (True, False, False, False), (False, True, True, False),
                                      (False, False, False, False)):
        tiny_cfg.lora.dropout, tiny_cfg.train.cpu_fast_path = 0.1, fast
        model = add_lora(load_model(tiny_cfg.model, for_training=True), tiny_cfg.lora)
        args = train.training_arguments(tiny_cfg, tmp_path / "ck", False, bf16)
        train.build_trainer(tiny_cfg, model, tok, exs, [], args, tmp_path / "log.jsonl")
        has_fast = any(isinstance(m, fastpath.LoraDropout) for m in model.modules())
        head = model.get_base_model().lm_head.weight.dtype
        assert has_fast == dropout and (head == torch.bfloat16) == cast, (bf16, fast)


def test_auto_attention_is_eager_for_cpu_training_and_sdpa_otherwise(tiny_cfg):
    assert tiny_cfg.model.attn_implementation == "auto"
    assert load_model(tiny_cfg.model, for_training=True).config._attn_implementation == "eager"
    assert load_model(tiny_cfg.model).config._attn_implementation == "sdpa"


def test_eager_and_sdpa_attention_give_the_same_loss(tiny_cfg):
    batch = _model_and_batch(tiny_cfg)[1]
    losses = []
    for attn in ("eager", "sdpa"):
        tiny_cfg.model.attn_implementation = attn
        model = load_model(tiny_cfg.model).eval()
        with torch.no_grad():
            losses.append(model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")}).loss)
    assert losses[0].item() == pytest.approx(losses[1].item(), rel=1e-5)  # stated tolerance: 1e-5 relative


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_fused_head_cross_entropy_equals_logits_then_cross_entropy(softcap):
    torch.manual_seed(0)
    vocab, dim, n = 1000, 24, 37
    weight = torch.randn(vocab, dim)
    hidden = torch.randn(n, dim, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    targets[:3] = torch.tensor([0, vocab - 1, 511])  # first and last vocabulary slices

    def stock(h):
        logits = h @ weight.T
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")

    expected = stock(hidden)
    (g_expected,) = torch.autograd.grad(expected * 0.5, hidden)
    for chunk in (128, 333, 4096):  # several slices, a ragged last slice, one slice
        loss = fastpath.head_cross_entropy(hidden, weight, targets, softcap, chunk=chunk)
        (grad,) = torch.autograd.grad(loss * 0.5, hidden)
        # fp32: stated tolerance 1e-5 relative on the loss, 1e-5 on the gradient
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        torch.testing.assert_close(grad, g_expected, rtol=1e-5, atol=1e-5)


def test_fused_head_cross_entropy_under_bf16_autocast_matches_the_stock_head():
    torch.manual_seed(0)
    weight = torch.randn(5000, 64) * 0.1
    hidden = torch.randn(40, 64, requires_grad=True)
    targets = torch.randint(0, 5000, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.nn.functional.linear(hidden, weight)
        fused = fastpath.head_cross_entropy(hidden, weight, targets)
    expected = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    (g_expected,) = torch.autograd.grad(expected, hidden)
    (grad,) = torch.autograd.grad(fused, hidden)
    # Both run the head matmul in bf16 and the softmax in fp32. Stated tolerance: 1e-4 relative on
    # the loss; the gradient within bf16 rounding (2e-2 relative to its largest element).
    assert fused.item() == pytest.approx(expected.item(), rel=1e-4)
    assert (grad - g_expected).abs().max() <= 2e-2 * g_expected.abs().max()


def test_fused_head_needs_a_frozen_bias_free_linear_head(tiny_cfg):
    model = load_model(tiny_cfg.model).requires_grad_(False)  # frozen, as under LoRA
    assert fastpath.fusable_head(model)[1] == 30.0  # the tiny model's final-logit softcap
    model.get_output_embeddings().weight.requires_grad_(True)
    assert fastpath.fusable_head(model) is None
    with pytest.raises(ValueError, match="frozen"):
        fastpath.head_cross_entropy(torch.zeros(2, 4), torch.zeros(8, 4, requires_grad=True), torch.zeros(2).long())


def test_onednn_kernel_cache_is_capped_unless_the_user_chose(monkeypatch):
    from convsum.modeling import limit_kernel_cache

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    limit_kernel_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")
    limit_kernel_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "8"
