"""Canonical settings: numbers typed by the schema, however they were written."""

from kneurons.config import canonical, conform

SCHEMA = {
    "type": "object",
    "properties": {
        "seeds": {"type": "array", "items": {"type": "integer"}},
        "lr": {"type": "number"},
        "device": {"type": "string"},
        "epochs": {"type": "integer"},
    },
}


def test_numbers_are_typed_by_the_schema():
    config = {"seeds": [0, 3.0], "lr": 1, "device": "cpu", "epochs": 10.0}
    assert conform(config, SCHEMA) == {"seeds": [0, 3], "lr": 1.0, "device": "cpu", "epochs": 10}
    assert type(conform(config, SCHEMA)["lr"]) is float


def test_numbers_written_as_strings_become_numbers():
    """`snakemake --config seeds=[0,3]` hands the list items over as strings."""
    config = {"seeds": ["0", "3"], "lr": "1e-3", "device": "0", "epochs": "x"}
    out = conform(config, SCHEMA)
    assert out["seeds"] == [0, 3] and out["lr"] == 0.001
    assert out["device"] == "0"  # a string where the schema wants one stays a string
    assert out["epochs"] == "x"  # not a number: left for the schema check to name


def test_canonical_sorts_keys_recursively():
    assert list(canonical({"b": {"d": 1, "c": 2}, "a": (1, 2)})) == ["a", "b"]
    assert canonical({"b": {"d": 1, "c": 2}, "a": (1, 2)}) == {"a": [1, 2], "b": {"c": 2, "d": 1}}
