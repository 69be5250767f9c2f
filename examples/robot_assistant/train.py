"""Train the robot-assistant ShadowPEFT adapter for SmolLM2-135M-Instruct on CPU (seeded, ~12 min on 2 cores).

Two heads, two targets, one forward (`ShadowPeftModel.forward_with_shadow` returns the base path's
logits and the *initial* shadow state s0, whose image under the frozen shadow head is the detached
model). shadow-peft's own loss puts the same labels on both heads, so this is a small custom loop:

- detached shadow (shadow_lm_head(s0)): the record's `shadow_target` — the action for commands,
  `[REMOTE]` for questions — then EOS. Weight 1: this is what runs on the device.
- attached model: the action for commands; for questions, the base model's own greedy answer
  (first tokens), generated once before training. Without a question loss the injection learns
  "always answer ACTION: ..." (it only ever sees commands); distilling the base's answer keeps the
  attached model a general assistant, which is what escalated questions need.

Questions without a distilled answer go through the shadow alone (no base forward), which is cheap,
so the shadow sees every question template while the expensive attached batches stay small.

The base stays frozen and the shadow head stays the (tied, frozen) base lm_head: the adapter holds
only the shadow layer and the injection/update weights, in fp32 (`save_pretrained`), under 8 MB
because the shadow MLP is narrowed (its neurons start as the strongest of base layer 0's).

    python examples/robot_assistant/train.py [--data DIR] [--base DIR] [--out DIR] [--shadow-steps N] [--joint-steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

# OpenMP's default busy-waiting made steps ~10x slower (3 s -> 30 s, measured) when other jobs share
# the 2 cores; passive waiting costs nothing on an idle machine. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OUT = REPO / "shadow_edge" / "exporters" / "demo_adapter"
IGNORE = -100


@dataclass
class Example:
    prompt_ids: list[int]
    shadow_ids: list[int]  # target tokens of the detached shadow, EOS included
    attached_ids: list[int] | None  # target tokens of the attached model (None: no attached loss)


def load_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def chat_encoder(base_dir: Path):
    """The runtime's own chat encoding (shadow_edge.runtimes.tokenizer) of a user prompt, checked against
    transformers' apply_chat_template so training sees exactly the ids `model.chat()` sends on device."""
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import AutoTokenizer

    from shadow_edge.runtimes.tokenizer import Tokenizer

    hf = AutoTokenizer.from_pretrained(base_dir)
    runtime = Tokenizer(RustTokenizer.from_file(str(base_dir / "tokenizer.json")), {"chat_template": hf.chat_template})

    def encode(prompt: str) -> list[int]:
        ids = runtime.encode_chat([{"role": "user", "content": prompt}])
        reference = hf.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if ids != list(reference):
            raise SystemExit(f"runtime and transformers chat encodings differ for {prompt!r}")
        return ids

    return hf, encode


def pad_left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids (0 at each row's first real token, as on device)."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def distil_base_answers(base, prompts: list[list[int]], tokens: int, eos: int, pad: int, batch: int) -> list[list[int]]:
    """The base model's greedy answers (at most `tokens` tokens, EOS kept when reached)."""
    answers: list[list[int]] = []
    for start in range(0, len(prompts), batch):
        ids, mask, _ = pad_left(prompts[start : start + batch], pad)
        out = base.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False, pad_token_id=pad
        )
        for row in out[:, ids.shape[1] :].tolist():
            answers.append(row[: row.index(eos) + 1] if eos in row else row)
    return answers


def init_shadow_from_layer0(model, base, intermediate: int) -> None:
    """Shadow layer = base layer 0 (its MLP cut to the `intermediate` neurons with the largest
    gate*up*down weight norms) and the base's final norm: detached output starts as the base cut to
    one layer instead of noise, which trains far faster."""
    shadow = model.peft_model.shadow_model
    layer0 = base.model.layers[0].layer if hasattr(base.model.layers[0], "layer") else base.model.layers[0]
    state = layer0.state_dict()
    mlp = layer0.mlp
    score = mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1) * mlp.down_proj.weight.norm(dim=0)
    keep = score.topk(intermediate).indices.sort().values
    state["mlp.gate_proj.weight"] = mlp.gate_proj.weight[keep]
    state["mlp.up_proj.weight"] = mlp.up_proj.weight[keep]
    state["mlp.down_proj.weight"] = mlp.down_proj.weight[:, keep]
    with torch.no_grad():
        shadow.layers[0].load_state_dict(state)
        shadow.norm.load_state_dict(base.model.norm.state_dict())


def head_ce(head, states: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed CE of head(states at t) against labels at t+1, and the number of labelled tokens. The
    head (576x49152, most of a shadow step's cost) is applied only where there is a label."""
    picked = labels[:, 1:] != IGNORE
    logits = head(states[:, :-1][picked])
    return F.cross_entropy(logits, labels[:, 1:][picked], reduction="sum"), int(picked.sum())


def labels_for(targets: list[list[int] | None], keep: int) -> torch.Tensor:
    """Labels for the last `keep` positions of a left-padded batch whose rows end with their targets."""
    out = torch.full((len(targets), keep), IGNORE)
    for i, target in enumerate(targets):
        if target:
            out[i, keep - len(target) :] = torch.tensor(target)
    return out


def batch_losses(model, rows: list[Example], pad: int, attached: bool) -> tuple[torch.Tensor, int, torch.Tensor, int]:
    """(shadow CE sum, tokens, attached CE sum, tokens). Rows end with their attached target when
    `attached` (the full model runs), else with their shadow target (the shadow runs alone)."""
    seqs = [r.prompt_ids + (r.attached_ids if attached else r.shadow_ids) for r in rows]
    ids, mask, positions = pad_left(seqs, pad)
    peft = model.peft_model
    zero = torch.zeros(())
    if attached:
        keep = max(len(r.attached_ids) for r in rows) + 1
        outputs, s0 = peft.forward_with_shadow(
            input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        )
        att, att_n = head_ce(torch.nn.Identity(), outputs.logits, labels_for([r.attached_ids for r in rows], keep))
        # The shadow target equals the attached one for commands; questions' shadow loss is taken
        # in the shadow-only batch (their sequences here end with the base's answer, not [REMOTE]).
        shadow_targets = [r.shadow_ids if r.shadow_ids == r.attached_ids else None for r in rows]
    else:
        keep = max(len(r.shadow_ids) for r in rows) + 1
        s0 = peft._compute_initial_shadow_hidden(
            input_ids=ids, attention_mask=mask, position_ids=positions, inputs_embeds=None
        )
        att, att_n = zero, 0
        shadow_targets = [r.shadow_ids for r in rows]
    if not any(shadow_targets):
        return zero, 0, att, att_n
    sh, sh_n = head_ce(model.shadow_lm_head, s0[:, -keep:], labels_for(shadow_targets, keep))
    return sh, sh_n, att, att_n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE / "data", help="folder with train.jsonl (make_data.py)")
    parser.add_argument("--base", type=Path, default=HERE / "work" / "base", help="SmolLM2 HF folder (made if missing)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder to write")
    parser.add_argument("--summary", type=Path, default=HERE / "train_summary.json", help="config and timings")
    parser.add_argument("--shadow-steps", type=int, default=500, help="phase 1: shadow-only steps")
    parser.add_argument("--joint-steps", type=int, default=120, help="phase 2: steps with the attached loss too")
    parser.add_argument("--attached-batch", type=int, default=6, help="rows through the full model per joint step")
    parser.add_argument("--shadow-batch", type=int, default=32, help="rows through the shadow alone per step")
    parser.add_argument("--distil-questions", type=int, default=128, help="questions with a base answer")
    parser.add_argument("--distil-tokens", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3, help="shadow layer")
    parser.add_argument("--adapter-lr", type=float, default=5e-3, help="injection and update (phase 2)")
    parser.add_argument("--intermediate", type=int, default=256, help="shadow MLP width (base: 1536)")
    parser.add_argument("--injection", type=int, default=8, help="injection_hidden_size")
    parser.add_argument("--gate", type=int, default=4, help="gate_hidden_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # shadow-peft draws its initial weights from the global generator
    rng = random.Random(args.seed)

    from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
    from transformers import AutoModelForCausalLM

    if not (args.base / "config.json").is_file():
        from shadow_edge.exporters.demo import write_smollm2_base

        write_smollm2_base(args.base)
    tokenizer, encode = chat_encoder(args.base)
    eos = int(tokenizer.eos_token_id)
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32, attn_implementation="sdpa")
    base.eval()

    def target(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False) + [eos]

    records = load_records(args.data / "train.jsonl")
    examples = [
        Example(
            encode(r["prompt"]),
            target(r["shadow_target"]),
            target(r["attached_target"]) if r["attached_target"] else None,
        )
        for r in records
    ]
    questions = [e for e in examples if e.attached_ids is None]
    distilled = rng.sample(questions, min(args.distil_questions, len(questions)))
    t0 = time.perf_counter()
    answers = distil_base_answers(base, [e.prompt_ids for e in distilled], args.distil_tokens, eos, pad, batch=32)
    for example, answer in zip(distilled, answers, strict=True):
        example.attached_ids = answer
    distil_s = time.perf_counter() - t0
    print(f"{len(examples)} examples; base answers for {len(distilled)} questions in {distil_s:.0f} s", flush=True)

    config = ShadowConfig(
        num_shadow_layers=1,
        shadow_intermediate_size=args.intermediate,
        injection_hidden_size=args.injection,
        gate_hidden_size=args.gate,
        alpha=0.1,
        dropout=0.1,
    )
    model = ShadowForCausalLM(get_shadow_model(base, config))
    init_shadow_from_layer0(model, base, args.intermediate)
    model.train()
    peft = model.peft_model
    shadow_params = [p for p in peft.shadow_model.parameters() if p.requires_grad]
    adapter_params = [*peft.shadow_injection_model.parameters(), *peft.shadow_update_model.parameters()]
    params = shadow_params + adapter_params
    print(f"trainable parameters: {sum(p.numel() for p in params):,}", flush=True)
    steps = args.shadow_steps + args.joint_steps

    def ramp(step: int, start: int, length: int) -> float:
        """Warmup over 5% of a phase, then linear decay to 5% at its end."""
        local = step - start
        if length <= 0 or local < 0:
            return 0.0
        return min(1.0, (local + 1) / max(1, length // 20)) * max(0.05, 1 - local / length)

    # The shadow trains over both phases; injection/update only get gradients in phase 2, so they
    # get their own warmup and decay there (under the shadow's decayed rate they barely moved).
    optimizer = torch.optim.AdamW(
        [{"params": shadow_params, "lr": args.lr}, {"params": adapter_params, "lr": args.adapter_lr}], weight_decay=0.0
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [lambda s: ramp(s, 0, steps), lambda s: ramp(s, args.shadow_steps, args.joint_steps)]
    )
    attached_pool = [e for e in examples if e.attached_ids is not None]

    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        # Phase 1 trains the shadow alone (cheap: one layer); phase 2 adds the attached loss, whose
        # injection then reads a shadow state that already encodes the answer.
        joint = step > args.shadow_steps
        sh_a, n_a, att, att_n = (
            batch_losses(model, rng.sample(attached_pool, args.attached_batch), pad, True) if joint else (0, 0, 0, 0)
        )
        sh_b, n_b, _, _ = batch_losses(model, rng.sample(examples, args.shadow_batch), pad, False)
        shadow_loss = (sh_a + sh_b) / max(1, n_a + n_b)
        attached_loss = att / max(1, att_n)
        loss = shadow_loss + attached_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step in (1, args.shadow_steps + 1):
            elapsed = time.perf_counter() - t0
            print(
                f"step {step}/{steps} ({'joint' if joint else 'shadow'})  shadow loss {shadow_loss.item():.4f}  "
                f"attached loss {float(torch.as_tensor(attached_loss).detach()):.4f}  {elapsed / 60:.1f} min",
                flush=True,
            )
    train_s = time.perf_counter() - t0

    model.eval()
    model.save_pretrained(args.out)
    size = (args.out / "shadow_adapter.safetensors").stat().st_size
    wall = time.perf_counter() - started
    summary = {
        "shadow_steps": args.shadow_steps,
        "joint_steps": args.joint_steps,
        "attached_batch": args.attached_batch,
        "shadow_batch": args.shadow_batch,
        "lr": args.lr,
        "adapter_lr": args.adapter_lr,
        "seed": args.seed,
        "threads": args.threads,
        "shadow_config": config.to_dict(),
        "trainable_parameters": sum(p.numel() for p in params),
        "adapter_bytes": size,
        "distil_seconds": round(distil_s, 1),
        "train_seconds": round(train_s, 1),
        "wall_seconds": round(wall, 1),
        "load_average_at_end": round(os.getloadavg()[0], 2),  # other jobs sharing the cores
    }
    args.summary.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} ({size / 1e6:.2f} MB adapter); wall time {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
