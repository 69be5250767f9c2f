"""The manifest is untrusted input: every field typed and bounded, every failure a BundleError.

The named cases are those of issue 11 (finding 3); the fuzz test mutates a real manifest at
random places and asserts that loading it either works or raises the project's error, never
another exception, within a bounded time and bounded Python allocations.
"""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import shadow_edge
from shadow_edge.bundle import MANIFEST_FILE, read_manifest
from shadow_edge.cli import app
from shadow_edge.errors import BundleError, ShadowEdgeError
from shadow_edge.manifest_schema import MAX_DEPTH, nesting_depth

BIG = "1" + "0" * 5000  # a 5000-digit number (json.dumps cannot write it on Python >= 3.11)
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def bundle(tiny_text_export, tmp_path_factory) -> Path:
    """A copy of a tiny text bundle whose manifest each test may overwrite."""
    return Path(shutil.copytree(tiny_text_export.bundle, tmp_path_factory.mktemp("schema") / "bundle"))


@pytest.fixture(scope="module")
def original(bundle) -> dict[str, Any]:
    return json.loads((bundle / MANIFEST_FILE).read_text())


def write(bundle: Path, data: Any) -> None:
    text = json.dumps(data).replace('"__BIG__"', BIG).replace('"__DEEP__"', DEEP)
    (bundle / MANIFEST_FILE).write_text(text)


def edited(original: dict, path: tuple, value: Any) -> dict:
    data = json.loads(json.dumps(original))
    *parents, last = path
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


NAMED = [
    (("model", "shadow", "num_layers"), 10_000_000, "model.shadow.num_layers is 10000000, outside 1..1024"),
    (("model", "base", "head_dim"), 10**12, "model.base.head_dim is 1000000000000, outside"),
    (("model", "base", "num_kv_heads"), -1, "model.base.num_kv_heads is -1, outside"),
    (("model", "vocab_size"), "__BIG__", "5001-digit number"),
    (("model", "vocab_size"), "96", "model.vocab_size must be an integer, got '96'"),
    (("model", "eos_token_ids"), [2, 500], "token id 500, outside the vocabulary"),
    (("model", "base"), "__DEEP__", "nests 100002 levels deep"),
    (("graphs", "shadow", "file"), "shadow\x00.onnx", "malformed file name 'shadow\\x00.onnx'"),
    (("graphs", "shadow", "file"), "/etc/passwd", "names a file outside the bundle: '/etc/passwd'"),
    (("graphs", "shadow", "file"), "a\\..\\shadow.onnx", "malformed file name"),
    (("graphs", "shadow", "inputs"), {"name": "x"}, "graphs.shadow.inputs must be a list"),
    (("model", "base", "head_dim"), 32, "past_key_values.0.key has 16 at axis 3, the manifest's model says 32"),
    (("model", "base", "num_layers"), 2, "needs 4 of each"),
    (("generation", "max_new_tokens"), "many", "generation.max_new_tokens must be an integer"),
    (("tokenizer", "add_bos_token"), 1, "tokenizer.add_bos_token must be true or false"),
    (("files", "weights.data", "size"), 1.5, "files.weights.data.size must be an integer"),
    (("validation",), [], "validation must be an object"),
]


@pytest.mark.parametrize(("path", "value", "words"), NAMED, ids=[w for *_, w in NAMED])
def test_a_malformed_manifest_is_a_bundle_error_naming_the_field(bundle, original, path, value, words):
    write(bundle, edited(original, path, value))
    started = time.monotonic()
    with pytest.raises(BundleError) as error:
        shadow_edge.load(bundle, verify="size")
    assert words in str(error.value)
    assert time.monotonic() - started < 5


def test_the_depth_prescan_ignores_brackets_in_strings():
    assert nesting_depth('{"a": "[[[[[[", "b": [1, {"c": "\\"]]]"}]}') == 3
    assert nesting_depth("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)) == MAX_DEPTH + 1


def test_nan_and_infinity_are_refused(bundle, original):
    text = json.dumps(edited(original, ("generation", "temperature"), "__X__"))
    for constant in ("NaN", "Infinity", "-Infinity", "1e999"):
        (bundle / MANIFEST_FILE).write_text(text.replace('"__X__"', constant))
        with pytest.raises(BundleError, match="not finite|JSON does not allow"):
            read_manifest(bundle)


# -- fuzz ------------------------------------------------------------------------------------------

SPECIAL = [-1, 0, 1, 2**31, 2**63, 10**12, 10_000_000, 1e308, -0.5, "", "../x", "/abs", "a\x00b", "a\\b", "__BIG__"]
SPECIAL += ["__DEEP__", True, None, [], {}, "[/x]", "[bold]"]
LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
VALUES = st.sampled_from(SPECIAL) | st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
OUTCOMES: Counter[str] = Counter()
MAX_PYTHON_BYTES = 64 << 20  # per case: a loaded tiny bundle needs a few MB


def tree_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found += tree_paths(child, (*prefix, key))
    return found


@st.composite
def mutated(draw, original: dict) -> dict:
    """The manifest with 1-3 edits: a value replaced, a key deleted, or a key added."""
    data = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(tree_paths(data)))
        *parents, last = path
        node = data
        for key in parents:
            node = node[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "delete" and isinstance(node, dict):
            del node[last]
        elif action == "add" and isinstance(node, dict):
            node[draw(st.text(max_size=6))] = draw(VALUES)
        else:
            node[last] = draw(VALUES)
    return data


def test_fuzzed_manifests_load_or_raise_the_projects_error(bundle, original):
    @settings(
        max_examples=120,
        deadline=5000,  # ms a case: a manifest that makes loading grow without bound fails here
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated(original), st.sampled_from(["attached", "detached"]))
    def case(data: dict, mode: str) -> None:
        write(bundle, data)
        tracemalloc.start()
        try:
            model = shadow_edge.load(bundle, mode=mode, verify="size")
            model.generate([1, 2], max_new_tokens=2)
            outcome = "loaded and generated"
        except ShadowEdgeError as exc:
            outcome = type(exc).__name__
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < MAX_PYTHON_BYTES, f"{peak} bytes allocated"
        shown = CliRunner().invoke(app, ["inspect", str(bundle)])
        assert shown.exit_code in (0, 1) and not isinstance(shown.exception, Exception), shown.output
        OUTCOMES[outcome] += 1

    started = time.monotonic()
    case()
    print(f"fuzzed manifests: {sum(OUTCOMES.values())} cases in {time.monotonic() - started:.1f} s: {dict(OUTCOMES)}")
