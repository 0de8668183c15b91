import pytest
from hypothesis import given, strategies as st

from streams.numbers import InvalidNumber, NumberPlan

PLAN = NumberPlan(country_code="86", national_prefix="0", international_prefix="00")
e164 = st.from_regex(r"\A[1-9][0-9]{6,14}\Z", fullmatch=True)
national = st.from_regex(r"\A[1-9][0-9]{8,10}\Z", fullmatch=True)


@given(e164)
def test_plus_and_international_prefix_give_the_same_digits(num):
    assert PLAN.normalise("+" + num) == num
    assert PLAN.normalise("00" + num) == num
    assert PLAN.normalise(num) == num


@given(e164)
def test_normalisation_is_idempotent(num):
    once = PLAN.normalise("+" + num)
    assert PLAN.normalise(once) == once


@given(national)
def test_national_prefix_gets_country_code(num):
    assert PLAN.normalise("0" + num) == "86" + num


@given(e164, st.lists(st.sampled_from([" ", "-", "(", ")", "."]), max_size=4))
def test_formatting_characters_are_ignored(num, seps):
    formatted = "+" + "".join(s + d for s, d in zip(seps + [""] * len(num), num))
    assert PLAN.normalise(formatted) == num


def test_uri_forms():
    assert PLAN.normalise("tel:+86-138-0013-8000") == "8613800138000"
    assert PLAN.normalise("sip:+8613800138000@ims.example.net;user=phone") == "8613800138000"


@pytest.mark.parametrize("short", ["110", "112", "911", "95588"])
def test_short_codes_kept(short):
    assert PLAN.normalise(short) == short


@pytest.mark.parametrize("bad", ["", "abc", "+", "12", "+0123456789", "+1234567890123456",
                                 "0086138", "86138x0013800", "١٢٣٤٥٦٧٨"])
def test_invalid_numbers_raise(bad):
    with pytest.raises(InvalidNumber):
        PLAN.normalise(bad)


@given(st.text(max_size=20))
def test_anything_either_normalises_to_digits_or_raises(text):
    try:
        out = PLAN.normalise(text)
    except InvalidNumber:
        return
    assert out.isdigit() and 3 <= len(out) <= 15


def test_other_country_plan():
    uk = NumberPlan(country_code="44", national_prefix="0", international_prefix="00")
    assert uk.normalise("020 7946 0958") == "442079460958"
