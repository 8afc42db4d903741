"""Training throughput: ``equal train`` against a plain TRL ``SFTTrainer`` script with the same settings.

Both fine-tune the bundled SmolLM2-135M-Instruct with the same LoRA recipe (r=16, alpha=32, dropout 0.05,
all linear layers, lr 2e-4 linear decay, seed 42, float32 on CPU / bf16 mixed precision on CUDA, no activation
checkpointing) on the same records (``examples/target.jsonl``, single exchanges). The plain script gives TRL
the records in its conversational prompt–completion form and lets it tokenise them; for single exchanges that
yields the same tokens and labels as ``equal train`` (checked in ``tests/test_train.py``), so both train on
the same tokens in the same order and differ only in what ``equal`` adds around the Trainer (checkpointing,
progress callback, train.json, report).

Each run is a fresh subprocess; runs alternate (trl, equal, trl, equal, ...) so that load on a shared
machine hits both alike, and the table reports the median. tokens/s = non-padding tokens seen / seconds of
``trainer.train()``; wall = the whole subprocess after imports (model load, tokenisation, training, saving).

Writes its table between the ``bench_train`` markers of benchmarks/RESULTS.md.

Usage: python benchmarks/bench_train.py [--quick] [--steps N] [--threads N] [--repeats N] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _results import write_section

SECTION = "bench_train"
DATA = Path(__file__).resolve().parent.parent / "examples" / "target.jsonl"


def worker_equal(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from equal.train import TrainConfig, train

    t0 = time.perf_counter()
    config = TrainConfig(max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length,
                         threads=args.threads, seed=42)
    result = train(str(DATA), out / "ckpt", config)
    return {"tokens": result.tokens_seen, "train_seconds": result.seconds, "wall": time.perf_counter() - t0,
            "steps": result.steps, "final_loss": result.final_loss, "device": result.device}


def worker_trl(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The plain TRL script: what a user would write by hand with the same settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    from equal.llm import model_dir

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    base = str(model_dir(None))
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    ds = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    sft_args = SFTConfig(
        output_dir=str(out / "trl"), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=2e-4, lr_scheduler_type="linear", max_length=args.max_length, seed=42, data_seed=42,
        bf16=cuda, use_cpu=not cuda, activation_checkpointing=False, report_to="none", disable_tqdm=True,
        logging_steps=1, save_strategy="no", include_num_input_tokens_seen="non_padding",
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=ds, processing_class=tokenizer,
                         peft_config=peft_config)
    t1 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t1
    trainer.save_model(str(out / "trl" / "final"))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"tokens": int(trainer.state.num_input_tokens_seen), "train_seconds": train_seconds,
            "wall": time.perf_counter() - t0, "steps": int(trainer.state.global_step),
            "final_loss": losses[-1] if losses else float("nan"), "device": "cuda" if cuda else "cpu"}


def run_worker(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", kind, "--steps", str(args.steps), "--threads", str(args.threads),
           "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 steps, 2 repeats")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    ap.add_argument("--worker", choices=("equal", "trl"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or (6 if args.quick else 20)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0))

    if args.worker:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
            fn = worker_equal if args.worker == "equal" else worker_trl
            print(json.dumps(fn(args, Path(tmp))))
        return

    from equal.llm import model_dir

    model_dir(None)  # dequantise the bundled GGUF once, outside every timed run
    runs: dict[str, list[dict[str, Any]]] = {"trl": [], "equal": []}
    for i in range(args.repeats):
        for kind in ("trl", "equal"):
            r = run_worker(kind, args)
            r["tps"] = r["tokens"] / r["train_seconds"]
            runs[kind].append(r)
            print(f"repeat {i + 1} {kind:5s}: {r['tokens']} tokens in {r['train_seconds']:.1f} s "
                  f"= {r['tps']:.1f} tok/s (wall {r['wall']:.1f} s, final loss {r['final_loss']:.4f})", flush=True)

    med = {k: statistics.median(r["tps"] for r in v) for k, v in runs.items()}
    wall = {k: statistics.median(r["wall"] for r in v) for k, v in runs.items()}
    ratio = med["equal"] / med["trl"]
    same_tokens = len({r["tokens"] for v in runs.values() for r in v}) == 1
    same_loss = max(abs(a["final_loss"] - b["final_loss"]) for a in runs["equal"] for b in runs["trl"])
    import torch
    import transformers
    import trl

    device = runs["equal"][0]["device"]
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover
        load = "n/a"
    lines = [
        "## Training throughput (`benchmarks/bench_train.py`)",
        "",
        f"Bundled SmolLM2-135M-Instruct, LoRA r=16/alpha=32 on all linear layers, {args.steps} steps of "
        f"batch {args.batch_size}, max length {args.max_length}, records of `examples/target.jsonl`; device "
        f"{device}, {args.threads} torch thread(s). Machine: {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl.__version__}; load average at the end {load} (a shared machine: compare rows, not runs). "
        f"Median of {args.repeats} alternating runs, each a fresh process.",
        "",
        "| trainer | tokens seen | train seconds | tokens/s | wall seconds (load + train + save) | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for kind, label in (("trl", "plain TRL SFTTrainer script"), ("equal", "equal train")):
        rs = runs[kind]
        lines.append(f"| {label} | {rs[0]['tokens']:,} | {statistics.median(r['train_seconds'] for r in rs):.1f} | "
                     f"{med[kind]:.1f} | {wall[kind]:.1f} | {statistics.median(r['final_loss'] for r in rs):.4f} |")
    verdict = "meets" if ratio >= 0.95 else "misses"
    if args.threads < len(os.sched_getaffinity(0)):
        lines += ["", f"{args.threads} thread(s) rather than all cores: on a machine shared with other jobs, "
                      "OpenMP threads spin-wait on each other and a step with 2 threads took several times longer "
                      "than with 1 (both trainers alike)."]
    lines += [
        "",
        f"equal train / plain TRL tokens/s: **{ratio:.3f}×** ({verdict} the ≥ 0.95× goal). Same tokens in both: "
        f"{'yes' if same_tokens else 'NO'}; largest final-loss difference between any two runs: {same_loss:.2e}.",
        "",
        f"Command: `python benchmarks/bench_train.py{' --quick' if args.quick else ''} --steps {args.steps} "
        f"--threads {args.threads} --repeats {args.repeats}`",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section(SECTION, table)


if __name__ == "__main__":
    main()
