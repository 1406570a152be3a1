"""MBR decoding and its seeded sampler (convsum/decoding.py) on the tiny model."""

import pytest
import torch

from convsum import decoding
from convsum.config import load_config
from convsum.errors import ConvsumError
from convsum.generate import load_summarizer

DIALOGUES = [
    "#Person1#: Hello, I am Tom. I would like a ticket.\n#Person2#: Sure. You can get a ticket at the station.",
    "#Person1#: Hello, I am Anna. I would like a room.\n#Person2#: Sure. You can get a room at the hotel.\n"
    "#Person1#: Thank you very much. It is a long day. It is a long day.",
    "#Person1#: Hi.\n#Person2#: Hi Bob.",
]


@pytest.fixture
def summarizer(tiny_cfg):
    tiny_cfg.generate.max_new_tokens = 12
    s = load_summarizer(None, tiny_cfg)  # random weights: varied, hard-to-predict tokens, as a test wants
    return s


def test_mbr_picks_the_consensus_candidate():
    cands = ["Tom buys a ticket at the station.", "Tom buys a ticket at the station today.",
             "The cat sat on the mat.", "Tom gets a ticket at the station."]
    assert decoding.mbr_pick(cands) == 0  # closest to all the others
    assert decoding.mbr_pick(["x y z", "a b c", "a b c", "a b d"]) == 1  # repeated samples are votes
    assert decoding.mbr_pick(["only"]) == 0
    assert decoding.mbr_pick(["same", "same"]) == 0  # ties go to the earliest (greedy)


def test_mbr_candidate_zero_is_greedy_and_samples_follow_the_temperature(summarizer):
    prompts = [summarizer.encode(d) for d in DIALOGUES]
    greedy = summarizer._decode(prompts, summarizer.gen)
    gen = summarizer.gen.with_overrides(strategy="mbr", mbr_samples=4)
    keys = [None if j == 0 else decoding.row_key(0, p, j) for p in prompts for j in range(5)]
    rows = summarizer._decode(prompts, gen, 5, keys)
    assert [rows[5 * i] for i in range(3)] == greedy  # one prefill + cache copies reproduce plain greedy
    assert len({tuple(r) for r in rows}) > 3  # samples differ from greedy and from each other
    cold = summarizer._decode(prompts, gen.with_overrides(temperature=1e-4), 5, keys)
    assert all(cold[5 * i + j] == greedy[i] for i in range(3) for j in range(5))  # T -> 0 is greedy


def test_mbr_is_seeded_and_batched_equals_one_by_one(summarizer):
    prompts = [summarizer.encode(d) for d in DIALOGUES]
    batched = summarizer.generate_ids(prompts, strategy="mbr", mbr_samples=4)
    assert summarizer.generate_ids(prompts, strategy="mbr", mbr_samples=4) == batched  # repeats exactly
    assert [summarizer.generate_ids([p], strategy="mbr", mbr_samples=4)[0] for p in prompts] == batched
    assert summarizer.generate_ids(prompts[::-1], strategy="mbr", mbr_samples=4) == batched[::-1]
    other_seed = summarizer.generate_ids(prompts, strategy="mbr", mbr_samples=4, seed=1)
    assert summarizer.candidates == 4 * 3 * 5 + 3 * 5
    # Another seed is another draw, just as reproducible: other candidates, the same choice one by one.
    assert [summarizer.generate_ids([p], strategy="mbr", mbr_samples=4, seed=1)[0] for p in prompts] == other_seed
    gen = summarizer.gen.with_overrides(strategy="mbr", mbr_samples=4)
    keys = {s: [None if j == 0 else decoding.row_key(s, p, j) for p in prompts for j in range(5)] for s in (0, 1)}
    first, second = summarizer._decode(prompts, gen, 5, keys[0]), summarizer._decode(prompts, gen, 5, keys[1])
    assert [first[5 * i] for i in range(3)] == [second[5 * i] for i in range(3)]  # the greedy candidate
    assert first != second


def test_seeded_sampler_matches_the_distribution():
    """Gumbel-max with top-k/top-p and temperature samples softmax(logits / T) over the nucleus."""
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -9.0]])
    s = decoding.SeededSampler([1], prompt_length=0, temperature=0.5, top_p=0.999, top_k=5)
    counts = torch.zeros(5)
    for step in range(4000):
        s.keys = [step * 7919]
        counts[s(torch.zeros(1, 0, dtype=torch.long), logits).argmax()] += 1
    expected = (logits[0] / 0.5).softmax(-1)
    assert torch.allclose(counts / counts.sum(), expected, atol=0.03)
    nucleus = decoding.SeededSampler([5], prompt_length=0, temperature=1.0, top_p=0.5, top_k=5)
    assert nucleus(torch.zeros(1, 0, dtype=torch.long), logits).argmax() == 0  # token 0 alone holds > 50%


def test_strategy_settings_are_validated(tiny_cfg):
    for bad, msg in [({"generate.strategy": "sample"}, "generate.strategy"),
                     ({"generate.strategy": "beam"}, "strategy beam needs >= 2"),
                     ({"generate.num_beams": 4}, "only used with generate.strategy=beam"),
                     ({"generate.strategy": "mbr", "generate.mbr_samples": 0}, "mbr_samples")]:
        with pytest.raises(ConvsumError, match=msg):
            load_config(None, bad)
    assert load_config(None, {"generate.strategy": "mbr"}).generate.settings()["mbr_samples"] == 8


def test_eos_bias_lengthens_or_shortens_summaries(summarizer):
    prompts = [summarizer.encode(d) for d in DIALOGUES]
    never_stop = summarizer.generate_ids(prompts, eos_bias=-1e9)
    assert all(len(r) == summarizer.gen.max_new_tokens for r in never_stop)
    stop_now = summarizer.generate_ids(prompts, eos_bias=1e9)
    assert all(r == [] for r in stop_now)
    mbr = summarizer.generate_ids(prompts, strategy="mbr", mbr_samples=2, eos_bias=1e9)
    assert all(r == [] for r in mbr)  # the bias comes before the sampler
