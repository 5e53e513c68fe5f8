import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minivlm.data import SPECIAL_TOKENS, Tokenizer, lexicon_texts
from minivlm.data.tokenizer import PAD

ENGLISH = Tokenizer.build(lexicon_texts("en"), kind="word")
CHINESE = Tokenizer.build(lexicon_texts("zh"), kind="char")
WORDS = [t for t in ENGLISH.tokens if t not in SPECIAL_TOKENS and t.isalpha()]
CHARS = [t for t in CHINESE.tokens if t not in SPECIAL_TOKENS]


def test_special_tokens_have_distinct_ids_and_pad_is_zero():
    for tokenizer in (ENGLISH, CHINESE):
        ids = [tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id]
        ids += [tokenizer.caption_id, tokenizer.question_id, tokenizer.answer_id]
        assert len(set(ids)) == len(SPECIAL_TOKENS)
        assert tokenizer.pad_id == 0 and tokenizer.tokens[0] == PAD
        assert tokenizer.bos_id != tokenizer.eos_id


def test_word_level_splits_on_spaces_and_punctuation():
    tokenizer = Tokenizer.build(["what colour is the square? a red one, and a blue"], kind="word")
    ids = tokenizer.encode("what colour is the square?")
    assert [tokenizer.tokens[i] for i in ids] == ["what", "colour", "is", "the", "square", "?"]
    assert tokenizer.decode(tokenizer.encode("a red one , and  a  blue")) == "a red one, and a blue"


@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=30), st.sampled_from(["", "?", ","]))
def test_word_level_round_trips_text_with_normal_spacing(words, punctuation):
    text = " ".join(words) + punctuation
    assert ENGLISH.decode(ENGLISH.encode(text)) == text


@given(st.lists(st.sampled_from(CHARS), min_size=1, max_size=40))
def test_char_level_round_trips_chinese_exactly(chars):
    text = "".join(chars)
    assert CHINESE.decode(CHINESE.encode(text)) == text


@given(st.text(alphabet="ab cd,.?", max_size=40))
def test_char_level_round_trips_any_known_characters_including_spaces(text):
    tokenizer = Tokenizer.build(["ab cd,.?"], kind="char")
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_chinese_word_level_keeps_cjk_punctuation_unspaced():
    text = "左上角有一个小的红色圆形，中间有一个大的蓝色正方形。"
    tokenizer = Tokenizer.build([text], kind="word")
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_unknown_words_become_unk_and_stay_visible():
    ids = ENGLISH.encode("a zebra")
    assert ids[1] == ENGLISH.unk_id
    assert ENGLISH.decode(ids) == "a <unk>"


def test_decode_skips_special_tokens_unless_asked():
    ids, _ = ENGLISH.caption_sequence("a red circle")
    assert ENGLISH.decode(ids) == "a red circle"
    assert ENGLISH.decode(ids, skip_special=False) == "<bos> <caption> a red circle <eos>"


def test_decode_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="ids\\[1\\]"):
        ENGLISH.decode([2, ENGLISH.vocab_size])


def test_offsets_locate_each_token_in_the_text():
    text = "is there a red circle?"
    ids, offsets = ENGLISH.encode_with_offsets(text)
    assert [text[a:b] for a, b in offsets] == ["is", "there", "a", "red", "circle", "?"]
    assert len(ids) == len(offsets)


def test_caption_sequence_trains_from_the_first_caption_token():
    ids, start = ENGLISH.caption_sequence("a red circle")
    assert ids[:2] == [ENGLISH.bos_id, ENGLISH.caption_id] and ids[-1] == ENGLISH.eos_id
    assert ids[start:-1] == ENGLISH.encode("a red circle")


def test_qa_sequence_trains_from_the_first_answer_token():
    ids, start = CHINESE.qa_sequence("有几个物体？", "三个")
    assert ids[0] == CHINESE.bos_id and ids[1] == CHINESE.question_id
    assert ids[start - 1] == CHINESE.answer_id
    assert ids[start:] == [*CHINESE.encode("三个"), CHINESE.eos_id]


def test_save_and_load_give_the_same_tokenizer(tmp_path):
    path = tmp_path / "tokenizer.json"
    CHINESE.save(path)
    assert Tokenizer.load(path) == CHINESE
    assert Tokenizer.from_dict(ENGLISH.to_dict()) == ENGLISH
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"], "no temporary file left"
    assert json.loads(path.read_text(encoding="utf-8"))["kind"] == "char"


def test_save_replaces_an_existing_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    CHINESE.save(path)
    ENGLISH.save(path)
    assert Tokenizer.load(path) == ENGLISH


def test_bad_tokenizer_input_is_refused():
    with pytest.raises(ValueError, match="kind"):
        Tokenizer.build(["a"], kind="byte")
    with pytest.raises(TypeError, match="texts\\[1\\]"):
        Tokenizer.build(["a", 3])
    with pytest.raises(ValueError, match="start with"):
        Tokenizer(["a", "b"])
    with pytest.raises(ValueError, match="repeats"):
        Tokenizer([*SPECIAL_TOKENS, "a", "a"])
    with pytest.raises(ValueError, match="format"):
        Tokenizer.from_dict({"tokens": []})
