"""bundle.GRAPH_KINDS is the one table of graph interfaces: both builders' graphs have exactly its
inputs and outputs, a manifest that says otherwise is refused, and so is a session that disagrees
with its manifest. The escalation policy's schema sits beside it and names every policy field."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import onnx
import pytest

import shadow_edge
from shadow_edge.bundle import GRAPH_KINDS, MANIFEST_FILE, SECTIONS, cache_for, read_manifest
from shadow_edge.errors import BundleError
from shadow_edge.escalation_policy import POLICY_SECTION, EscalationPolicy
from shadow_edge.runtimes.sessions import GraphRunner


def graph_names(path: Path) -> tuple[list[str], list[str]]:
    model = onnx.load(path, load_external_data=False)
    return [i.name for i in model.graph.input], [o.name for o in model.graph.output]


@pytest.fixture(scope="module")
def traced(tiny_exports, tmp_path_factory) -> Path:
    ckpt = tiny_exports["llama"].checkpoint
    out = tmp_path_factory.mktemp("traced") / "bundle"
    return shadow_edge.export(ckpt, out, builder="traced", with_base=True, validate=False).output


def test_both_builders_write_the_tables_inputs_and_outputs(tiny_exports, traced):
    for bundle in (tiny_exports["llama"].bundle, tiny_exports["qwen3"].bundle, traced):
        manifest = read_manifest(bundle)
        assert {"shadow", "shadow_lm", "backbone", "shadow_head"} <= set(manifest.graphs)
        for name, spec in manifest.graphs.items():
            kind, cache = GRAPH_KINDS[name], cache_for(manifest.model, name)
            inputs, outputs = graph_names(Path(bundle) / spec.file)
            assert inputs == kind.input_names(cache) == [t.name for t in spec.inputs], (bundle, name)
            assert outputs == kind.output_names(cache) == [t.name for t in spec.outputs], (bundle, name)
    assert "base_lm" in read_manifest(traced).graphs


@pytest.fixture
def bundle(tiny_exports, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_exports["llama"].bundle, tmp_path / "bundle"))


def rewrite(bundle: Path, edit) -> None:
    data = json.loads((bundle / MANIFEST_FILE).read_text())
    edit(data["graphs"])
    (bundle / MANIFEST_FILE).write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (
            lambda g: g["backbone"]["inputs"].pop(3),
            "a backbone graph takes input_ids, attention_mask, position_ids, sh",
        ),
        (lambda g: g["shadow"]["outputs"].reverse(), "gives 'shadow_states' first"),
        (
            lambda g: g["shadow_lm"]["outputs"].insert(1, g["shadow_lm"]["outputs"].pop(2)),
            "in the order present.0.key",
        ),
        (lambda g: g.update(draft=g.pop("shadow_head")), "manifest names a graph 'draft'"),
        (lambda g: g["shadow_head"]["inputs"].extend(g["shadow"]["inputs"][3:]), "a shadow_head graph has none"),
    ],
    ids=["missing input", "outputs reordered", "present out of order", "unknown graph", "cached head"],
)
def test_a_manifest_whose_graph_is_not_its_kind_is_refused(bundle, edit, words):
    rewrite(bundle, edit)
    with pytest.raises(BundleError, match="manifest") as error:
        read_manifest(bundle)
    assert words in str(error.value)


def test_a_session_whose_outputs_are_not_the_manifests_is_refused(tiny_exports):
    bundle = tiny_exports["llama"].bundle
    manifest = read_manifest(bundle)
    spec = manifest.graphs["shadow"]
    swapped = replace(spec, outputs=[spec.outputs[0], spec.outputs[2], spec.outputs[1], *spec.outputs[3:]])
    with pytest.raises(BundleError, match="does not match the manifest: its outputs"):
        GraphRunner(Path(bundle) / spec.file, swapped, cache_for(manifest.model, "shadow"))


def test_the_escalation_schema_beside_the_manifest_names_every_policy_field():
    assert set(POLICY_SECTION) == {f.name for f in fields(EscalationPolicy)}
    assert SECTIONS["Manifest.escalation"] is POLICY_SECTION
