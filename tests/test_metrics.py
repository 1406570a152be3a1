"""ROUGE metrics against values worked out by hand.

Reminder: F1 = 2PR/(P+R), which for n-gram overlap is 2*matches/(n-grams in pred + n-grams in ref),
and for LCS is 2*LCS/(len pred + len ref).
"""

import pytest

from convsum.errors import ConvsumError
from convsum.metrics import KEYS, example_scores, format_table, score_pairs


def single(prediction: str, reference: str) -> dict[str, float]:
    return {key: values[0] for key, values in example_scores(prediction, [reference]).items()}


def test_identical_texts_score_100():
    scores = single("The cat sat on the mat. It was happy.", "The cat sat on the mat. It was happy.")
    assert scores == pytest.approx({key: 100.0 for key in KEYS})


def test_disjoint_texts_score_0():
    assert single("red blue green", "cat dog bird") == pytest.approx({key: 0.0 for key in KEYS})


def test_partial_overlap_by_hand():
    # pred [the cat sat], ref [the cat ran]
    # rouge1: 2 of 3 unigrams match each way -> P = R = 2/3 -> F = 66.6667
    # rouge2: {the cat, cat sat} vs {the cat, cat ran}: 1 of 2 -> 50.0
    # rougeL: LCS "the cat" = 2 -> 2*2/(3+3) = 66.6667
    scores = single("the cat sat", "the cat ran")
    assert scores["rouge1"] == pytest.approx(200 / 3)
    assert scores["rouge2"] == pytest.approx(50.0)
    assert scores["rougeL"] == pytest.approx(200 / 3)


def test_partial_overlap_unequal_lengths_by_hand():
    # pred [the cat sat on the mat] (6), ref [a cat was on the mat today] (7)
    # rouge1 matches (clipped): cat, on, the (pred has 2, ref 1 -> 1), mat = 4 -> 2*4/13 = 61.5385
    # rouge2: pred 5 bigrams, ref 6; shared "on the", "the mat" = 2 -> 2*2/11 = 36.3636
    # rougeL: LCS cat-on-the-mat = 4 -> 2*4/13 = 61.5385
    scores = single("the cat sat on the mat", "a cat was on the mat today")
    assert scores["rouge1"] == pytest.approx(800 / 13)
    assert scores["rouge2"] == pytest.approx(400 / 11)
    assert scores["rougeL"] == pytest.approx(800 / 13)


def test_word_order_separates_rouge1_rouge2_rougeL():
    # pred [cat dog bird fish], ref [dog cat bird fish]
    # rouge1: all 4 match -> 100
    # rouge2: {cat dog, dog bird, bird fish} vs {dog cat, cat bird, bird fish}: 1 of 3 -> 33.3333
    # rougeL: LCS e.g. cat-bird-fish = 3 -> 2*3/8 = 75.0
    scores = single("cat dog bird fish", "dog cat bird fish")
    assert scores["rouge1"] == pytest.approx(100.0)
    assert scores["rouge2"] == pytest.approx(100 / 3)
    assert scores["rougeL"] == pytest.approx(75.0)


def test_porter_stemming_matches_inflections():
    # "dogs" -> "dog", "running" -> "run": both sides become [dog run]
    assert single("dogs running", "dog run") == pytest.approx({key: 100.0 for key in KEYS})


def test_rougelsum_rewards_swapped_sentences_rougel_does_not():
    # pred [the cat sat][a dog ran], ref [a dog ran][the cat sat]
    # rouge1: all 6 unigrams match -> 100
    # rouge2: pred {the cat, cat sat, sat a, a dog, dog ran}, ref {a dog, dog ran, ran the, the cat,
    #         cat sat}: 4 of 5 -> 80.0
    # rougeL (whole text as one sequence): LCS = 3 ("the cat sat" or "a dog ran") -> 2*3/12 = 50.0
    # rougeLsum: each ref sentence finds its full match in some pred sentence: union LCS 3 + 3 = 6
    #            -> P = R = 6/6 -> 100.0
    scores = single("The cat sat. A dog ran.", "A dog ran. The cat sat.")
    assert scores["rouge1"] == pytest.approx(100.0)
    assert scores["rouge2"] == pytest.approx(80.0)
    assert scores["rougeL"] == pytest.approx(50.0)
    assert scores["rougeLsum"] == pytest.approx(100.0)


def test_sentence_split_on_question_and_exclamation_marks():
    # pred [did the cat sit][a dog ran], ref [a dog ran][did the cat sit]: 7 tokens each
    # rougeL: LCS = 4 ("did the cat sit") -> 2*4/14 = 57.1429
    # rougeLsum: union LCS 3 + 4 = 7 -> 100.0 (only if ? and ! end sentences)
    scores = single("Did the cat sit? A dog ran!", "A dog ran! Did the cat sit?")
    assert scores["rougeL"] == pytest.approx(400 / 7)
    assert scores["rougeLsum"] == pytest.approx(100.0)


def test_multi_reference_per_reference_mean_and_best():
    # Example 1: pred [cat dog]
    #   ref1 "cat dog"   r1 100, r2 100
    #   ref2 "cat fish"  r1 2*1/4 = 50, r2 0
    #   ref3 "bird fish" r1 0, r2 0
    # Example 2: pred [red blue green] (bigrams: red blue, blue green)
    #   ref1 "red blue"       r1 2*2/5 = 80, r2 2*1/(2+1) = 66.6667
    #   ref2 "pink"           r1 0, r2 0
    #   ref3 "green red blue" r1 100, r2 1 of 2 -> 50
    # per_reference r1: s1 (100+80)/2 = 90, s2 (50+0)/2 = 25, s3 (0+100)/2 = 50
    # per_reference r2: s1 (100+66.6667)/2 = 83.3333, s2 0, s3 (0+50)/2 = 25
    # mean r1: ex1 150/3 = 50, ex2 180/3 = 60 -> 55
    # mean r2: ex1 100/3 = 33.3333, ex2 116.6667/3 = 38.8889 -> 36.1111
    # best r1: ex1 100, ex2 100 -> 100
    # best r2 (max per key, not the r1-best reference): ex1 100, ex2 66.6667 -> 83.3333
    #   (picking ex2's rouge1-best ref3 would give 75.0)
    result = score_pairs(
        ["cat dog", "red blue green"],
        [["cat dog", "cat fish", "bird fish"], ["red blue", "pink", "green red blue"]],
    )
    assert result["n"] == 2
    assert list(result["per_reference"]) == ["summary1", "summary2", "summary3"]
    assert set(result) == {"n", "per_reference", "mean", "best", "ci95", "gen_length_words", "ref_length_words"}
    assert all(set(v) == set(KEYS) for v in result["per_reference"].values())
    per_ref = result["per_reference"]
    assert [per_ref[n]["rouge1"] for n in per_ref] == [90.0, 25.0, 50.0]
    assert [per_ref[n]["rouge2"] for n in per_ref] == [83.3333, 0.0, 25.0]
    assert result["mean"]["rouge1"] == 55.0
    assert result["mean"]["rouge2"] == 36.1111
    assert result["best"]["rouge1"] == 100.0
    assert result["best"]["rouge2"] == 83.3333
    assert result["gen_length_words"] == 2.5  # (2 + 3) / 2


def test_reference_names_default_and_custom():
    assert list(score_pairs(["a b"], [["a b"]])["per_reference"]) == ["summary"]
    named = score_pairs(["a b"], [["a b", "c"]], reference_names=["x", "y"])
    assert named["per_reference"]["x"]["rouge1"] == 100.0
    assert named["per_reference"]["y"]["rouge1"] == 0.0


def test_single_reference_mean_and_best_equal_that_reference():
    result = score_pairs(["the cat sat"], [["the cat ran"]])
    assert result["per_reference"]["summary"] == result["mean"] == result["best"]
    assert result["mean"]["rouge1"] == 66.6667


@pytest.mark.parametrize(
    "predictions, references, message",
    [
        (["a", "b"], [["a"]], "2 predictions for 1 references"),
        ([], [], "no predictions"),
        (["a", "b"], [["a"], ["b", "c"]], "same number"),
        (["a"], [[]], "same number"),
        (["a"], ["a"], "list of reference lists"),
    ],
)
def test_bad_inputs_raise_convsum_error(predictions, references, message):
    with pytest.raises(ConvsumError, match=message):
        score_pairs(predictions, references)


def test_wrong_number_of_reference_names():
    with pytest.raises(ConvsumError, match="reference names"):
        score_pairs(["a"], [["a", "b"]], reference_names=["only one"])


def test_empty_prediction_scores_zero():
    assert single("", "the cat sat") == pytest.approx({key: 0.0 for key in KEYS})
    result = score_pairs(["", "   "], [["the cat sat"], ["a dog"]])
    assert result["mean"] == {key: 0.0 for key in KEYS}
    assert result["gen_length_words"] == 0.0


def test_format_table_multi_reference():
    base = score_pairs(["cat dog", "red blue green"], [["cat fish", "cat dog"], ["red", "pink"]])
    tuned = score_pairs(["cat dog", "red blue green"], [["cat dog", "cat dog"], ["red blue green", "pink"]])
    table = format_table({"base": base, "fine-tuned": tuned})
    lines = table.splitlines()
    assert "vs summary1" in lines[0] and "mean of 2" in lines[0]
    assert "R1" in lines[1] and "RLsum" in lines[1]
    base_line = next(line for line in lines if line.startswith("base"))
    tuned_line = next(line for line in lines if line.startswith("fine-tuned"))
    # base vs summary1: ex1 "cat dog"/"cat fish" r1 50, ex2 "red blue green"/"red" r1 2*1/4 = 50 -> 50.0
    # base mean of 2: ex1 (50+100)/2 = 75, ex2 (50+0)/2 = 25 -> 50.0
    assert base_line.split()[1:3] == ["|", "50.0"]
    assert "100.0" in tuned_line  # fine-tuned vs summary1 is identical to its prediction


def test_format_table_single_reference_uses_what_exists():
    metrics = score_pairs(["the cat sat"], [["the cat ran"]])
    table = format_table({"base": metrics})
    assert "vs summary" in table
    assert "mean of" not in table  # with one reference, the mean is that reference: one column
    assert "66.7" in table and "50.0" in table


def test_sentence_newlines_do_not_change_rouge1_rouge2_rougel():
    # The module scores all keys in one call on newline-split text; that is only valid if the
    # newlines are invisible to rouge1/2/L. Check against rouge-score on the raw text.
    from rouge_score import rouge_scorer

    pred, ref = "The cat sat. A dog ran! Who?", "A dog ran. The cat sat on a mat."
    raw = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(ref, pred)
    ours = single(pred, ref)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert ours[key] == pytest.approx(raw[key].fmeasure * 100)


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_more_examples():
    from convsum.metrics import bootstrap_interval

    few = bootstrap_interval([0.0, 100.0] * 10)
    many = bootstrap_interval([0.0, 100.0] * 1000)
    assert few[0] < 50 < few[1] and many[0] < 50 < many[1]
    assert many[1] - many[0] < (few[1] - few[0]) / 5  # ~1/sqrt(n)
    assert bootstrap_interval([42.0] * 30) == [42.0, 42.0]


def test_paired_bootstrap_gives_the_known_answer():
    from convsum.metrics import compare_systems, paired_bootstrap

    refs = [["tom buys a ticket"], ["anna books a room"], ["bob calls the bank"]] * 10
    perfect = [r[0] for r in refs]
    empty_ish = ["nothing here"] * len(refs)
    c = compare_systems(perfect, empty_ish, refs)
    assert c["rouge1"]["a"] == 100.0 and c["rouge1"]["b"] == 0.0
    assert c["rouge1"]["mean_diff"] == 100.0 and c["rouge1"]["ci95"] == [100.0, 100.0] and c["rouge1"]["a_wins"] == 1.0
    same = compare_systems(perfect, perfect, refs)["rougeL"]
    assert same["mean_diff"] == 0.0 and same["a_wins"] == 0.0  # a tie is not a win
    # a constant +1 shift with noise around it: the interval holds 1, A wins nearly always
    a = [float(i % 7) + 1 for i in range(200)]
    b = [float(i % 7) for i in range(200)]
    r = paired_bootstrap(a, b)
    assert r["ci95"] == [1.0, 1.0] and r["a_wins"] == 1.0
    with pytest.raises(ConvsumError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_table_prints_interval_half_widths():
    from convsum.metrics import format_table, score_pairs

    result = score_pairs(["cat dog", "red blue", "a b"], [["cat dog"], ["red green"], ["c d"]])
    text = format_table({"m": result}, refs=("summary",))
    assert "±" in text and "95% bootstrap interval" in text
