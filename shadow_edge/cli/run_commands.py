"""`run` (attached, detached, cascade, speculative) and `serve`."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .common import MODE_HELP, command, console, err_console, fail, friendly_errors, warn

ModeOption = Annotated[str | None, typer.Option(help=f"{MODE_HELP} (default: attached)")]
# modes in which the shadow answers: its small network leans on the chat format it was trained in
PLAIN_PROMPT_JUNK = ("detached", "cascade")
RemoteApiKey = Annotated[
    str | None,
    typer.Option(envvar="SHADOW_EDGE_REMOTE_API_KEY", show_envvar=True, help="--remote's API key (Bearer)"),
]


DraftTokens = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="--mode speculative: most tokens drafted per backbone pass (4); --mode cascade: decode a local "
        "escalation speculatively, drafting up to this many",
    ),
]


@command()
@friendly_errors
def run(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    prompt: Annotated[str | None, typer.Option(help="prompt text (the user message with --chat)")] = None,
    prompt_ids: Annotated[str | None, typer.Option(help="prompt token ids, e.g. 1,2,3")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="use the chat template; interactive without --prompt")] = False,
    mode: ModeOption = None,
    detached: Annotated[bool, typer.Option("--detached", help="= --mode detached")] = False,
    cascade: Annotated[bool, typer.Option("--cascade", help="= --mode cascade")] = False,
    speculative: Annotated[bool, typer.Option("--speculative", help="= --mode speculative")] = False,
    draft_tokens: DraftTokens = None,
    remote: Annotated[str | None, typer.Option(help="--mode cascade: OpenAI-compatible server to escalate to")] = None,
    remote_api_key: RemoteApiKey = None,
    confidence_threshold: Annotated[
        float | None, typer.Option(min=0.0, help="--mode cascade: escalate if a first token's top-1 prob is below")
    ] = None,
    escalation_marker: Annotated[
        str | None, typer.Option(help="--mode cascade: escalate when the shadow says this ('' = off)")
    ] = None,
    escalation_window: Annotated[
        int | None, typer.Option(min=1, help="--mode cascade: how many first tokens the rules look at")
    ] = None,
    max_mean_entropy: Annotated[
        float | None, typer.Option(min=0.0, help="--mode cascade: escalate above this mean entropy (nats)")
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
    from ..errors import GenerationError
    from ..runtimes.generate import parse_token_ids
    from ..runtimes.modes import open_model

    sources = [name for name, given in (("--prompt", prompt), ("--prompt-ids", prompt_ids)) if given is not None]
    if len(sources) > 1 or (chat and prompt_ids is not None):
        raise GenerationError("give one of --prompt TEXT, --prompt-ids 1,2,3 or --chat [--prompt TEXT]")
    if not sources and not chat:
        raise GenerationError("no prompt given", hint="pass --prompt TEXT, --prompt-ids 1,2,3 or --chat")
    if greedy and any(v is not None for v in (temperature, top_k, top_p)):
        raise GenerationError("--greedy cannot be combined with --temperature, --top-k or --top-p")
    if threads is not None and threads < 1:
        raise GenerationError(f"--threads must be at least 1, got {threads}")
    threads = _threads(threads)
    policy = dict(
        remote=remote,
        confidence_threshold=confidence_threshold,
        marker=escalation_marker,
        window=escalation_window,
        max_mean_entropy=max_mean_entropy,
    )
    # the old flags are aliases of --mode
    chosen = [m for m, given in (("detached", detached), ("cascade", cascade), ("speculative", speculative)) if given]
    chosen += [mode] if mode is not None else []
    if len(set(chosen)) > 1:
        raise GenerationError(f"{', '.join(chosen)} are different modes: choose one with --mode")
    mode = chosen[0] if chosen else "attached"
    if mode != "cascade" and any(v is not None for v in policy.values()):
        raise GenerationError("--remote and the escalation options need --mode cascade")
    if mode not in ("speculative", "cascade") and draft_tokens is not None:
        raise GenerationError("--draft-tokens needs --mode speculative or --mode cascade")
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
    interactive = chat and prompt is None and stdin_is_terminal()
    if interactive and as_json:
        raise GenerationError("--json needs --prompt with --chat (the interactive chat streams text)")
    opened = dict(threads=threads, verify="size" if no_verify else "hash", prepack=not low_memory)
    cascade_options = dict(policy, remote_api_key=remote_api_key) if mode == "cascade" else {}
    model = open_model(bundle, mode, draft_tokens=draft_tokens, **opened, **cascade_options)
    if no_verify:  # once the sizes passed: what follows is not checked
        warn("--no-verify: weights are not checked against their sha256; corrupt ones may give wrong tokens")
    if chat and not (model.tokenizer and model.tokenizer.chat_template):
        raise GenerationError("--chat needs a bundle whose tokenizer has a chat template", hint="use --prompt")
    if not chat and mode in PLAIN_PROMPT_JUNK and model.tokenizer is not None and model.tokenizer.chat_template:
        warn(
            f"this bundle was trained on chats (its tokenizer has a chat template): in {mode} mode a plain "
            "prompt mostly gives junk; pass --chat to wrap it in the template"
        )
    if interactive:
        _chat_loop(model, settings)
        return
    if chat:
        messages = [{"role": "user", "content": prompt if prompt is not None else read_stdin()}]
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


def _threads(threads: int | None) -> int | None:
    from ..runtimes.sessions import capped_threads

    threads, warning = capped_threads(threads)
    if warning:
        warn(warning)
    return threads


def stdin_is_terminal() -> bool:
    return sys.stdin is not None and not sys.stdin.closed and sys.stdin.isatty()


def read_stdin() -> str:
    """The message `--chat` without `--prompt` reads from a pipe: stdin must be open and UTF-8."""
    from ..errors import GenerationError

    no_stdin = GenerationError(
        "--chat without --prompt reads the message from stdin, which is closed", hint="pass --prompt TEXT"
    )
    if sys.stdin is None or sys.stdin.closed:
        raise no_stdin
    try:
        text = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    except (OSError, ValueError):  # EBADF: file descriptor 0 closed under Python
        raise no_stdin from None
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GenerationError(
                f"the message on stdin is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
    if not text.strip():
        raise GenerationError("--chat without --prompt read an empty message from stdin", hint="pass --prompt TEXT")
    return text


def _stream(model: Any, responses: Any, interruptible: bool = False) -> str:
    """Print a generation as it is produced (text, or ids without a tokenizer); returns the text.
    interruptible: Ctrl-C ends this answer (what was printed is kept) instead of the command."""
    pieces = []
    last = None
    try:
        for last in responses:
            piece = last.text if model.tokenizer is not None else f"{last.token} "
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        if not interruptible:
            raise
        getattr(responses, "close", lambda: None)()  # the generation stops here
        sys.stdout.write("\n")
        err_console.print("[dim]answer stopped (Ctrl-C)[/]")
        return "".join(pieces)
    sys.stdout.write("\n")
    if last is not None:
        served = getattr(responses, "served_by", None)  # a cascade's stream says who answered
        note = f"served by {served}" + (f" ({responses.reason})" if responses.reason else "") + "; " if served else ""
        stats = last.speculative  # speculative decoding's drafts, this call's
        if stats is not None:
            note += f"{stats['accepted']}/{stats['drafted']} drafts accepted in {stats['rounds']} backbone passes; "
        err_console.print(f"[dim]{escape(note)}{last.summary()}[/]", highlight=False, soft_wrap=True)
    return "".join(pieces)


def _chat_loop(model: Any, settings: dict[str, Any]) -> None:
    """An interactive chat: readline's line editing and history where Python has it; Ctrl-C
    stops the answer being written (or clears the line being typed), not the chat."""
    with contextlib.suppress(ImportError):  # Windows has no readline
        import readline  # noqa: F401  (importing it gives input() editing and history)
    messages: list[dict[str, str]] = []
    if getattr(model, "prompt_cache", False) is None:  # each turn prefills only the new messages
        from ..runtimes.prompt_cache import PromptCache

        model.prompt_cache = PromptCache()
    err_console.print("[dim]chat: an empty line or Ctrl-D ends it; Ctrl-C stops an answer[/]")
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return
        except KeyboardInterrupt:  # as in a shell: the line is dropped, the chat goes on
            print()
            continue
        if not line.strip():
            return
        messages.append({"role": "user", "content": line})
        answer = _stream(model, model.stream_chat(messages, **settings), interruptible=True)
        messages.append({"role": "assistant", "content": answer})


@command()
@friendly_errors
def serve(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes the server to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    mode: Annotated[str, typer.Option(help=MODE_HELP)] = "attached",
    remote: Annotated[str | None, typer.Option(help="--mode cascade: server to escalate to")] = None,
    remote_api_key: RemoteApiKey = None,
    draft_tokens: DraftTokens = None,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads (default: one per core)")] = None,
    max_tokens_limit: Annotated[int, typer.Option(min=1, help="the largest max_tokens a request may ask")] = 1024,
    max_concurrent: Annotated[int, typer.Option(min=1, help="generations at once (they share the cores)")] = 1,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="SHADOW_EDGE_API_KEY", show_envvar=True, help="require Authorization: Bearer KEY"),
    ] = None,
    allow_no_auth: Annotated[
        bool, typer.Option("--allow-no-auth", help="serve a network address without an API key")
    ] = False,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="web origin allowed to call the server from a browser (repeatable)")
    ] = None,
    allowed_host: Annotated[
        list[str] | None, typer.Option(help="Host name to answer to (repeatable; default on loopback: localhost)")
    ] = None,
) -> None:
    """Serve a bundle over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)."""
    from ..runtimes.modes import ALL_MODES, open_model

    threads = _threads(threads)
    try:
        from ..runtimes.server import serve as run_server
    except ImportError as exc:
        fail(f"{exc.name or exc} is not installed", 'install the serve extra: pip install "shadow-edge[serve]"')
    from ..runtimes.server_guard import exposure

    exposure(host, api_key, allow_no_auth)  # refused before the model loads; the server prints the warning
    if mode not in ALL_MODES:
        fail(f"--mode must be one of {', '.join(ALL_MODES)}, got {mode!r}")
    if remote is not None and mode != "cascade":
        fail("--remote needs --mode cascade")
    if mode not in ("speculative", "cascade") and draft_tokens is not None:
        fail("--draft-tokens needs --mode speculative or --mode cascade")
    # cascade: a device-side server where the shadow answers, escalating per the bundle's policy
    remote_options = dict(remote=remote, remote_api_key=remote_api_key) if mode == "cascade" else {}
    model = open_model(bundle, mode, threads=threads, draft_tokens=draft_tokens, **remote_options)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    line = f"serving {escape(str(bundle))} ({model.mode}) at {url}/v1 (Ctrl-C stops)"
    console.print(line, highlight=False, soft_wrap=True)
    console.file.flush()  # before the server blocks: a pipe or a log file gets the line now
    limits = dict(max_tokens_limit=max_tokens_limit, max_concurrent=max_concurrent)
    access = dict(
        api_key=api_key, allow_no_auth=allow_no_auth, cors_origins=cors_origin or (), allowed_hosts=allowed_host
    )
    run_server(model, host, port, log_level="warning", model_name=bundle.resolve().name, **limits, **access)
