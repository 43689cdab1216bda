import pytest

from morf_search import Arch, Expert, StageSpec

EXAMPLES = [
    "k3.5-soft_k3.7-hard_k5.7.9-static_k7-static",
    "k3.5.7-hard2_k3-static_k3-static_k3-static",
    "k3.3d2.5-soft_k1.3-static_k3d3-hard_k9-static",
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_canonical_string_round_trips(text):
    arch = Arch.parse(text)
    assert str(arch) == text
    assert Arch.parse(str(arch)) == arch


def test_parsing_reads_each_field():
    arch = Arch.parse("k3.5.7-hard2_k3d2.5-soft_k3-static_k3-static")
    assert arch.stages[0] == StageSpec((Expert(3), Expert(5), Expert(7)), "hard", 2)
    assert arch.stages[1].experts == (Expert(3, 2), Expert(5)) and arch.stages[1].kernel_size == 5
    assert not arch.is_static and Arch.uniform([3], "static").is_static


def test_non_canonical_input_normalizes():
    assert str(Arch.parse("k7.3.5-hard1_k5.3-soft")) == "k3.5.7-hard_k3.5-soft"


def test_arch_is_frozen_and_hashable():
    a, b = Arch.parse(EXAMPLES[0]), Arch.parse(EXAMPLES[0])
    assert hash(a) == hash(b) and len({a, b, Arch.parse(EXAMPLES[1])}) == 2
    with pytest.raises(AttributeError):
        a.stages = ()


@pytest.mark.parametrize("text,stage,message", [
    ("k3.5-soft_k4-static", "stage 1 'k4-static'", "odd"),
    ("k3.5-soft_k3-dynamic", "stage 1 'k3-dynamic'", "unknown routing"),
    ("k3.5-hard3_k3-static", "stage 0 'k3.5-hard3'", "top_k"),
    ("k3.5-soft2_k3-static", "stage 0 'k3.5-soft2'", "top_k"),
    ("k3.5-soft__k3-static", "stage 1 ''", "expected k<sizes"),
    ("3.5-soft", "stage 0 '3.5-soft'", "expected k<sizes"),
])
def test_bad_strings_name_the_stage(text, stage, message):
    with pytest.raises(ValueError) as info:
        Arch.parse(text)
    assert stage in str(info.value) and message in str(info.value)


def test_coerce_checks_stage_count():
    with pytest.raises(ValueError, match="has 2 stages, the network has 4"):
        Arch.coerce("k3-static_k3-static", num_stages=4)
