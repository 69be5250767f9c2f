"""`shadow_edge.open(bundle, mode)` and `--mode`: every mode through one door, token-exact with the
old loaders, options of another mode refused."""

from __future__ import annotations

import json
import urllib.request

import pytest
from serving import serve_command
from typer.testing import CliRunner

import shadow_edge
from shadow_edge.bundle import read_manifest
from shadow_edge.cli import app
from shadow_edge.errors import BundleError
from shadow_edge.runtimes.modes import supported_modes

PROMPT = [1, 17, 42, 5, 63, 8]
GREEDY = {"max_new_tokens": 6, "temperature": 0.0, "eos_token_ids": []}
OLD = {
    "attached": lambda b: shadow_edge.load(b, "attached", threads=1),
    "detached": lambda b: shadow_edge.load(b, "detached", threads=1),
    "cascade": lambda b: shadow_edge.load_cascade(b, threads=1),
    "speculative": lambda b: shadow_edge.load_speculative(b, threads=1),
}


def test_the_tiny_bundle_supports_every_mode_but_base(tiny_exports):
    manifest = read_manifest(tiny_exports["llama"].bundle)
    assert supported_modes(manifest) == ["attached", "detached", "cascade", "speculative"]


@pytest.mark.parametrize("mode", list(OLD))
def test_open_gives_the_old_loaders_tokens(tiny_exports, mode):
    bundle = tiny_exports["llama"].bundle
    model = shadow_edge.open(bundle, mode=mode, threads=1)
    assert model.mode == mode and type(model) is type(OLD[mode](bundle))
    assert model.generate(PROMPT, **GREEDY).token_ids == OLD[mode](bundle).generate(PROMPT, **GREEDY).token_ids


def test_open_refuses_a_mode_the_bundle_lacks_and_options_of_another_mode(tiny_exports):
    bundle = tiny_exports["llama"].bundle
    with pytest.raises(BundleError, match="does not support base mode"):
        shadow_edge.open(bundle, mode="base")
    with pytest.raises(ValueError, match="mode must be one of attached, detached, base, cascade, speculative"):
        shadow_edge.open(bundle, mode="fast")
    with pytest.raises(ValueError, match="draft_tokens applies to speculative and cascade modes only"):
        shadow_edge.open(bundle, mode="attached", draft_tokens=2)
    with pytest.raises(ValueError, match="remote apply to cascade mode only"):
        shadow_edge.open(bundle, mode="detached", remote="http://127.0.0.1:1")
    with pytest.raises(TypeError, match="unknown options: colour"):
        shadow_edge.open(bundle, mode="cascade", colour="red")


@pytest.mark.parametrize("mode", list(OLD))
def test_run_mode_equals_the_old_flag(tiny_exports, mode):
    bundle = str(tiny_exports["llama"].bundle)
    common = [bundle, "--prompt-ids", "1,17,42,5", "--max-new-tokens", "5", "--greedy", "--json", "--threads", "1"]
    by_mode = CliRunner().invoke(app, ["run", *common, "--mode", mode])
    assert by_mode.exit_code == 0, by_mode.output
    flag = [] if mode == "attached" else [f"--{mode}"]
    by_flag = CliRunner().invoke(app, ["run", *common, *flag])
    assert by_flag.exit_code == 0, by_flag.output
    got, want = json.loads(by_mode.stdout), json.loads(by_flag.stdout)
    assert got["mode"] == mode and got["token_ids"] == want["token_ids"]


def test_run_refuses_two_modes_and_options_of_another(tiny_exports):
    bundle = str(tiny_exports["llama"].bundle)
    result = CliRunner().invoke(app, ["run", bundle, "--prompt-ids", "1", "--mode", "detached", "--cascade"])
    assert result.exit_code == 1 and "different modes" in result.stderr
    result = CliRunner().invoke(app, ["run", bundle, "--prompt-ids", "1", "--draft-tokens", "2"])
    assert result.exit_code == 1 and "--draft-tokens needs --mode speculative or --mode cascade" in result.stderr


def test_serve_mode_speculative_answers_as_the_library(tiny_exports):
    bundle = tiny_exports["llama"].bundle
    want = shadow_edge.open(bundle, "speculative", threads=1).generate([1, 2, 3], max_new_tokens=6, temperature=0)
    with serve_command(bundle, "--mode", "speculative", "--threads", "1") as (url, _):
        with urllib.request.urlopen(url + "/health", timeout=60) as answer:
            assert json.load(answer)["mode"] == "speculative"
        body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 6, "temperature": 0}).encode()
        sent = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(sent, timeout=60) as answer:
            assert json.load(answer)["choices"][0]["token_ids"] == want.token_ids
