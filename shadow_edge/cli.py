"""The `shadow-edge` command: wiring only. Each command checks its flags, calls one library
function, and prints a Rich table or JSON. Library errors become one line (what happened, what
to do next) and exit code 1; SHADOW_EDGE_DEBUG=1 shows the traceback instead. torch is imported
by `export` alone, so the other commands start fast and run where torch is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import ShadowEdgeError

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Export ShadowPEFT models to ONNX and run them on edge CPUs."
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, hint: str = "") -> None:
    """One line on stderr (never wrapped), then exit 1. Messages quote user input: escape Rich markup."""
    err_console.print(
        f"[bold red]error:[/] {escape(message)}" + (f"; [dim]{escape(hint)}[/]" if hint else ""),
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1)


def friendly_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors (and Ctrl-C) into one line and a non-zero exit."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        if os.environ.get("SHADOW_EDGE_DEBUG"):
            return command(*args, **kwargs)
        try:
            return command(*args, **kwargs)
        except ShadowEdgeError as exc:
            fail(str(exc), exc.hint)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: nothing was written")
            raise typer.Exit(130) from None
        except ImportError as exc:
            fail(f"{exc.name or exc} is not installed", 'install the export extra: pip install "shadow-edge[export]"')

    return run


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@app.command()
@friendly_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="ShadowPEFT checkpoint folder (shadow_config.json ...)")],
    output: Annotated[Path, typer.Argument(help="bundle folder to write")],
    base: Annotated[Path | None, typer.Option(help="base model folder (default: CHECKPOINT/base)")] = None,
    shadow: Annotated[
        Path | None, typer.Option(help="explicit shadow config folder (default: CHECKPOINT/shadow_model)")
    ] = None,
    opset: Annotated[int, typer.Option(min=14, max=21, help="ONNX opset")] = 17,
    force: Annotated[bool, typer.Option("--force", help="replace an existing OUTPUT")] = False,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="compare with PyTorch")] = True,
    tolerance: Annotated[float, typer.Option(min=0.0, help="max |logit diff| allowed by validation")] = 1e-3,
    with_base: Annotated[bool, typer.Option("--with-base", help="add the base model alone (mode 'base')")] = False,
    quantize: Annotated[str, typer.Option(help="none, int8, int4 (or int8-dynamic): see `quantize`")] = "none",
    mobile: Annotated[bool, typer.Option("--mobile", help="also write .ort graphs and genai_config.json")] = False,
    escalation_marker: Annotated[
        str | None, typer.Option(help="cascade default: escalate when the shadow says this ('' = off)")
    ] = None,
    confidence_threshold: Annotated[
        float | None, typer.Option(min=0.0, help="cascade default: escalate under this top-1 probability")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Export a ShadowPEFT checkpoint to a validated ONNX bundle."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .exporters.export import STAGES
    from .exporters.export import export as run_export

    labels = {
        "load": "loading checkpoint and base model",
        "shadow": "tracing shadow graph",
        "shadow_lm": "tracing detached shadow graph",
        "shadow_head": "tracing shadow head graph",
        "backbone": "tracing backbone graph",
        "base_lm": "tracing base graph",
        "tokenizer": "copying tokenizer",
        "validate": "validating against PyTorch",
        "finish": "writing manifest",
    }
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=as_json,
    ) as progress:
        task = progress.add_task(labels["load"], total=len(STAGES))

        def advance(stage: str) -> None:
            index = STAGES.index(stage)
            following = STAGES[index + 1] if index + 1 < len(STAGES) else stage
            progress.update(task, completed=index + 1, description=labels[following])

        do_export = run_export
        if quantize != "none":
            from functools import partial

            from .exporters.quantize import export_quantized

            do_export = partial(export_quantized, to=quantize)
        result = do_export(
            checkpoint,
            output,
            base=base,
            shadow=shadow,
            opset=opset,
            force=force,
            validate=validate,
            tolerance=tolerance,
            with_base=with_base,
            mobile=mobile,
            escalation=_escalation(marker=escalation_marker, confidence_threshold=confidence_threshold),
            progress=advance,
        )
    if as_json:
        print(
            json.dumps(
                {
                    "output": str(result.output),
                    "seconds": round(result.seconds, 2),
                    "validation": result.manifest.validation,
                    "fidelity": result.manifest.fidelity,
                }
            )
        )
        return
    _print_manifest(result.output)
    _warn_fidelity(getattr(result, "warnings", []))
    console.print(f"[green]exported[/] {result.output} in {result.seconds:.1f} s")


def _escalation(**settings: Any) -> dict[str, Any]:
    """Escalation settings given on the command line ('' turns the marker off)."""
    from .runtimes.escalation import EscalationPolicy

    return EscalationPolicy().updated(**settings).to_dict() if any(v is not None for v in settings.values()) else {}


@app.command()
@friendly_errors
def inspect(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print the manifest as JSON")] = False,
) -> None:
    """Show a bundle's graphs, inputs/outputs, sizes and validation figures."""
    from .bundle import read_manifest

    manifest = read_manifest(bundle)
    if as_json:
        print(manifest.to_json(), end="")
        return
    _print_manifest(bundle)


def _print_manifest(bundle: Path) -> None:
    from .bundle import read_manifest

    m = read_manifest(bundle)
    model = m.model
    console.print(
        f"[bold]{bundle}[/]  {model.architecture}  vocab {model.vocab_size}  hidden {model.hidden_size}  "
        f"modes: {', '.join(m.modes)}"
    )
    caches = Table("cache", "layers", "kv heads", "head dim", "hidden", title="KV caches")
    for name, spec in (("base", model.base), ("shadow", model.shadow)):
        caches.add_row(name, str(spec.num_layers), str(spec.num_kv_heads), str(spec.head_dim), str(spec.hidden_size))
    console.print(caches)
    graphs = Table("graph", "file", "precision", "inputs", "outputs", "weights", title="Graphs")
    per_graph = m.source.get("weights", {}).get("bytes_per_graph", {})
    for name, g in m.graphs.items():
        cached = any(t.name.startswith("past_key_values") for t in g.inputs)
        ins = ", ".join(t.name for t in g.inputs if not t.name.startswith("past_key_values"))
        outs = ", ".join(t.name for t in g.outputs if not t.name.startswith("present"))
        ins, outs = (ins + ", past_key_values.*", outs + ", present.*") if cached else (ins, outs)
        graphs.add_row(name, g.file, g.precision, ins, outs, _human_bytes(per_graph.get(name, 0)))
    console.print(graphs)
    files = Table("file", "size", "sha256", title=f"Files ({_human_bytes(sum(f.size for f in m.files.values()))})")
    for name, f in m.files.items():
        files.add_row(name, _human_bytes(f.size), f.sha256[:12])
    console.print(files)
    if m.fidelity:
        _print_fidelity(m.fidelity)
    if "shadow_head" in m.graphs:
        policy = {k: v for k, v in m.escalation.items() if v is not None}
        console.print(f"cascade: yes (`run --cascade`); escalation defaults: {json.dumps(policy)}", highlight=False)
    v = m.validation
    if v.get("skipped") or not v:
        console.print(f"[yellow]validation: {v.get('reason', 'skipped at export')}[/]")
        return
    table = Table(
        "mode", "max |logit diff|", "argmax agree", "greedy match", title=f"Validation (tolerance {v['tolerance']:g})"
    )
    for mode in [*m.modes, *(["shadow_head"] if "shadow_head" in v else [])]:
        g = v["greedy"].get(mode)
        table.add_row(
            mode,
            f"{v[mode]['max_abs_diff']:.2e}",
            f"{v[mode]['argmax_agree']}/{v[mode]['positions']}",
            f"{g['matched_prefix']}/{g['tokens']}" if g else "(as detached)",
        )
    console.print(table)


@app.command()
@friendly_errors
def run(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    prompt: Annotated[str | None, typer.Option(help="prompt text (the user message with --chat)")] = None,
    prompt_ids: Annotated[str | None, typer.Option(help="prompt token ids, e.g. 1,2,3")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="use the chat template; interactive without --prompt")] = False,
    detached: Annotated[bool, typer.Option("--detached", help="shadow network only (no backbone)")] = False,
    cascade: Annotated[
        bool, typer.Option("--cascade", help="shadow first; escalate to attached (or --remote) when unsure")
    ] = False,
    remote: Annotated[str | None, typer.Option(help="--cascade: OpenAI-compatible server to escalate to")] = None,
    confidence_threshold: Annotated[
        float | None, typer.Option(min=0.0, help="--cascade: escalate if a first token's top-1 prob is below")
    ] = None,
    escalation_marker: Annotated[
        str | None, typer.Option(help="--cascade: escalate when the shadow says this ('' = off)")
    ] = None,
    escalation_window: Annotated[
        int | None, typer.Option(min=1, help="--cascade: how many first tokens the rules look at")
    ] = None,
    max_mean_entropy: Annotated[
        float | None, typer.Option(min=0.0, help="--cascade: escalate above this mean entropy (nats)")
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="default: the bundle's, within the context")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="argmax decoding (temperature 0)")] = False,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy (default: the bundle's)")] = None,
    top_k: Annotated[int | None, typer.Option(help="keep the k most likely tokens (0 = off)")] = None,
    top_p: Annotated[float | None, typer.Option(help="nucleus sampling mass (1 = off)")] = None,
    repetition_penalty: Annotated[float | None, typer.Option(help="1 = off")] = None,
    seed: Annotated[int | None, typer.Option(help="same seed, same output")] = None,
    threads: Annotated[int | None, typer.Option(help="onnxruntime intra-op threads (default: one per core)")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="check file sizes only, not sha256")] = False,
    low_memory: Annotated[bool, typer.Option("--low-memory", help="no weight prepacking: less RAM, slower")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object with tokens, text and stats")] = False,
) -> None:
    """Generate from a bundle: stream text (or token ids) to stdout, stats to stderr."""
    from .errors import GenerationError
    from .runtimes.generate import parse_token_ids
    from .runtimes.model import load

    sources = [name for name, given in (("--prompt", prompt), ("--prompt-ids", prompt_ids)) if given is not None]
    if len(sources) > 1 or (chat and prompt_ids is not None):
        raise GenerationError("give one of --prompt TEXT, --prompt-ids 1,2,3 or --chat [--prompt TEXT]")
    if not sources and not chat:
        raise GenerationError("no prompt given", hint="pass --prompt TEXT, --prompt-ids 1,2,3 or --chat")
    if greedy and any(v is not None for v in (temperature, top_k, top_p)):
        raise GenerationError("--greedy cannot be combined with --temperature, --top-k or --top-p")
    if threads is not None and threads < 1:
        raise GenerationError(f"--threads must be at least 1, got {threads}")
    policy = dict(
        remote=remote,
        confidence_threshold=confidence_threshold,
        marker=escalation_marker,
        window=escalation_window,
        max_mean_entropy=max_mean_entropy,
    )
    if cascade and detached:
        raise GenerationError("--cascade and --detached are two different modes: choose one")
    if not cascade and any(v is not None for v in policy.values()):
        raise GenerationError("--remote and the escalation options need --cascade")
    flags = dict(
        max_new_tokens=max_new_tokens,
        temperature=0.0 if greedy else temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        stop=stop,
    )
    settings = {k: v for k, v in flags.items() if v is not None}
    interactive = chat and prompt is None and sys.stdin.isatty()
    if interactive and as_json:
        raise GenerationError("--json needs --prompt with --chat (the interactive chat streams text)")
    opened = dict(threads=threads, verify="size" if no_verify else "hash", prepack=not low_memory)
    if cascade:
        from .runtimes.cascade import load_cascade

        model = load_cascade(bundle, **opened, **policy)
    else:
        model = load(bundle, mode="detached" if detached else "attached", **opened)
    if chat and not (model.tokenizer and model.tokenizer.chat_template):
        raise GenerationError("--chat needs a bundle whose tokenizer has a chat template", hint="use --prompt")
    if interactive:
        _chat_loop(model, settings)
        return
    if chat:
        messages = [{"role": "user", "content": prompt if prompt is not None else sys.stdin.read()}]
        if as_json:
            print(json.dumps(model.chat(messages, **settings).to_dict()))
            return
        _stream(model, model.stream_chat(messages, **settings))
        return
    request = prompt if prompt is not None else parse_token_ids(prompt_ids or "")
    if as_json:
        print(json.dumps(model.generate(request, **settings).to_dict()))
        return
    _stream(model, model.stream(request, **settings))


def _stream(model: Any, responses: Any) -> str:
    """Print a generation as it is produced (text, or ids without a tokenizer); returns the text."""
    pieces = []
    last = None
    for last in responses:
        piece = last.text if model.tokenizer is not None else f"{last.token} "
        pieces.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if last is not None:
        served = getattr(responses, "served_by", None)  # a cascade's stream says who answered
        note = f"served by {served}" + (f" ({responses.reason})" if responses.reason else "") + "; " if served else ""
        err_console.print(f"[dim]{escape(note)}{last.summary()}[/]", highlight=False, soft_wrap=True)
    return "".join(pieces)


def _chat_loop(model: Any, settings: dict[str, Any]) -> None:
    messages: list[dict[str, str]] = []
    err_console.print("[dim]chat: an empty line or Ctrl-D ends it[/]")
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line.strip():
            return
        messages.append({"role": "user", "content": line})
        answer = _stream(model, model.stream_chat(messages, **settings))
        messages.append({"role": "assistant", "content": answer})


@app.command()
@friendly_errors
def serve(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes the server to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    mode: Annotated[str, typer.Option(help="attached, detached, base or cascade")] = "attached",
    remote: Annotated[str | None, typer.Option(help="--mode cascade: server to escalate to")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads (default: one per core)")] = None,
    max_tokens_limit: Annotated[int, typer.Option(min=1, help="the largest max_tokens a request may ask")] = 1024,
    max_concurrent: Annotated[int, typer.Option(min=1, help="generations at once (they share the cores)")] = 1,
) -> None:
    """Serve a bundle over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)."""
    from .runtimes.model import MODES, load

    try:
        from .runtimes.server import serve as run_server
    except ImportError as exc:
        fail(f"{exc.name or exc} is not installed", 'install the serve extra: pip install "shadow-edge[serve]"')
    if mode not in (*MODES, "cascade"):
        fail(f"--mode must be one of {', '.join(MODES)} or cascade, got {mode!r}")
    if remote is not None and mode != "cascade":
        fail("--remote needs --mode cascade")
    if mode == "cascade":  # a device-side server: the shadow answers, escalating per the bundle's policy
        from .runtimes.cascade import load_cascade

        model = load_cascade(bundle, remote=remote, threads=threads)
    else:
        model = load(bundle, mode=mode, threads=threads)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    line = f"serving {escape(str(bundle))} ({model.mode}) at {url}/v1 (Ctrl-C stops)"
    console.print(line, highlight=False, soft_wrap=True)
    console.file.flush()  # before the server blocks: a pipe or a log file gets the line now
    limits = dict(max_tokens_limit=max_tokens_limit, max_concurrent=max_concurrent)
    run_server(model, host, port, log_level="warning", model_name=bundle.resolve().name, **limits)


# ---- quantize and eval ------------------------------------------------------------------------


def _print_fidelity(report: dict[str, Any]) -> None:
    title = f"Fidelity against {report['against']} ({report['tokens']} tokens of {report['text']})"
    table = Table("mode", "top-1 agree", "mean KL", "perplexity", "ppl (against)", "greedy agree", title=title)
    for mode, f in report["modes"].items():
        table.add_row(
            mode,
            f"{f['top1_agreement']:.1%}",
            f"{f['mean_kl']:.4f}",
            f"{f['perplexity']:.4g}",
            f"{f['reference_perplexity']:.4g}",
            f"{f['greedy_agreement']:.0%} of {f['greedy_prompts']} x {f['greedy_tokens']} tokens",
        )
    console.print(table)


def _warn_fidelity(failures: list[str]) -> None:
    """Fidelity under the floor is said loudly, on stderr, but is not an error without --strict."""
    for failure in failures:
        err_console.print(f"[bold red]WARNING: fidelity under the floor:[/] {failure}", highlight=False)


def _read_text(path: Path | None) -> str | None:
    from .errors import BundleError

    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read --text {path}: {getattr(exc, 'strerror', None) or exc}") from None


@app.command()
@friendly_errors
def quantize(
    bundle: Annotated[Path, typer.Argument(help="float32 bundle folder")],
    output: Annotated[Path, typer.Argument(help="bundle folder to write")],
    to: Annotated[str, typer.Option(help="int8 or int4 (MatMulNBits), or int8-dynamic (quantize_dynamic)")] = "int4",
    block_size: Annotated[int, typer.Option(help="MatMulNBits block size along K (16..256, power of 2)")] = 32,
    quantize_head: Annotated[
        str | None, typer.Option(help="also quantize the lm_head(s): int8 or int4 (default: kept float32)")
    ] = None,
    accuracy_level: Annotated[
        int | None, typer.Option(help="MatMulNBits compute: 0 (int8 default, exact) .. 4 (int4 default, fast)")
    ] = None,
    grid: Annotated[
        bool, typer.Option("--grid/--no-grid", help="keep weights that lie on a block grid (GGUF) exactly")
    ] = True,
    off_grid: Annotated[
        str, typer.Option(help="precision of weights on no grid: auto (int8 beside a GGUF base's int4), int8, int4")
    ] = "auto",
    only: Annotated[list[str] | None, typer.Option(help="keep only this mode (repeatable), e.g. detached")] = None,
    graph: Annotated[list[str] | None, typer.Option(help="quantize only this graph (repeatable)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing OUTPUT")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="fidelity under the floor is an error")] = False,
    check: Annotated[bool, typer.Option("--eval/--no-eval", help="evaluate against BUNDLE")] = True,
    text: Annotated[Path | None, typer.Option(help="text file to evaluate on (default: built-in)")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads for the evaluation")] = None,
    mobile: Annotated[bool, typer.Option("--mobile", help="also write .ort graphs and genai_config.json")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Quantize a bundle's weights (int8/int4) and report its fidelity against the source."""
    from .exporters.quantize import quantize_bundle

    with (
        err_console.status(f"quantizing to {to} and evaluating", spinner="dots")
        if not as_json
        else contextlib.nullcontext()
    ):
        result = quantize_bundle(
            bundle,
            output,
            to,
            block_size=block_size,
            quantize_head=quantize_head or False,
            accuracy_level=accuracy_level,
            grid=grid,
            off_grid=off_grid,
            graphs=graph,
            modes=only,
            force=force,
            check=check,
            strict=strict,
            text=_read_text(text),
            threads=threads,
            mobile=mobile,
        )
    m = result.manifest
    _warn_fidelity(result.warnings)
    if as_json:
        sizes = {"bytes": sum(f.size for f in m.files.values())}
        print(
            json.dumps(
                {
                    "output": str(result.output),
                    "seconds": round(result.seconds, 2),
                    **sizes,
                    "precision": {g: s.precision for g, s in m.graphs.items()},
                    "fidelity": m.fidelity,
                }
            )
        )
        return
    _print_manifest(result.output)
    console.print(f"[green]quantized[/] {result.output} in {result.seconds:.1f} s")


@app.command(name="eval")
@friendly_errors
def eval_(
    bundle: Annotated[Path, typer.Argument(help="bundle folder to evaluate")],
    against: Annotated[Path | None, typer.Option(help="reference bundle (e.g. the float32 source)")] = None,
    reference: Annotated[
        Path | None, typer.Option(help="reference checkpoint, run in PyTorch (needs the export extra)")
    ] = None,
    base: Annotated[Path | None, typer.Option(help="--reference's base model (default: CKPT/base)")] = None,
    text: Annotated[Path | None, typer.Option(help="text file (default: built-in English text)")] = None,
    mode: Annotated[list[str] | None, typer.Option(help="evaluate this mode only (repeatable)")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime (and torch) threads")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Fidelity of BUNDLE against another bundle or its PyTorch checkpoint: top-1 agreement, KL,
    perplexity, greedy agreement, per mode."""
    from .exporters.evaluate import evaluate

    if (against is None) == (reference is None):
        fail("give one of --against BUNDLE or --reference CHECKPOINT")
    if base is not None and reference is None:
        fail("--base goes with --reference (the checkpoint's base model)")
    report = evaluate(
        bundle, against, text=_read_text(text), modes=mode, threads=threads, reference=reference, base=base
    )
    if as_json:
        print(json.dumps(report))
        return
    _print_fidelity(report)


@app.command()
@friendly_errors
def bench(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    prompt_lens: Annotated[str, typer.Option(help="comma-separated prompt lengths")] = "32,256,1024",
    new_tokens: Annotated[int, typer.Option(min=2, max=4096, help="tokens decoded per run")] = 32,
    modes: Annotated[str | None, typer.Option(help="comma-separated modes (default: all the bundle has)")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime intra-op threads")] = None,
    repeat: Annotated[int, typer.Option(min=1, max=100, help="runs per case (median reported)")] = 3,
    constrained: Annotated[bool, typer.Option("--constrained", help="also detached at 1 thread")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    plot: Annotated[Path | None, typer.Option(help="write a PNG: decode tok/s against context")] = None,
) -> None:
    """Measure prefill/decode speed, per-graph time, peak RSS and memory-bandwidth use."""
    from .runtimes.bench import BenchSettings
    from .runtimes.bench import bench as run_bench
    from .runtimes.bench import plot as write_plot
    from .runtimes.generate import parse_token_ids

    settings = BenchSettings(
        prompt_lens=parse_token_ids(prompt_lens),
        new_tokens=new_tokens,
        modes=modes.split(",") if modes else None,
        threads=threads,
        repeat=repeat,
        constrained=constrained,
    )
    report = run_bench(bundle, settings, on_mode=None if as_json else _announce_mode)
    if plot:
        write_plot(report, plot)
    if as_json:
        print(json.dumps(report))
        return
    table = Table(
        "mode",
        "thr",
        "prompt",
        "prefill tok/s",
        "decode tok/s",
        "ms/token by graph",
        "MB/token",
        "of BW",
        "RSS MB",
        title=f"bench {bundle}",
    )
    for result in report["results"]:
        for row in result["rows"]:
            if "skipped" in row:
                table.add_row(result["mode"], str(result["threads"] or "auto"), str(row["prompt_len"]), row["skipped"])
                continue
            d = row["decode_tok_per_s"]
            table.add_row(
                result["mode"],
                str(result["threads"] or "auto"),
                str(row["prompt_len"]),
                f"{row['prefill_tok_per_s']:.0f}",
                f"{d['median']:.1f} ({d['min']:.1f}-{d['max']:.1f})",
                ", ".join(f"{g} {ms:.1f}" for g, ms in row["decode_ms_per_graph"].items()),
                f"{row['bytes_per_token']['total'] / 1e6:.0f}",
                f"{100 * row['bandwidth_fraction']:.0f}%",
                f"{result['peak_rss_mb']:.0f}",
            )
    console.print(table)
    bw = report["memory_bandwidth_gb_s"]
    console.print(
        f"memory read bandwidth {bw['used']:.1f} GB/s (probe runs: {', '.join(f'{b:.1f}' for b in bw['runs'])})"
    )


def _announce_mode(mode: str, threads: int | None) -> None:
    err_console.print(f"[dim]measuring {mode}{f' at {threads} thread(s)' if threads else ''} ...[/]")
