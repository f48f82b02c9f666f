"""Runs every benchmark and writes their tables to ``bench/RESULTS.md`` (the README links it).

Each benchmark is its own script measuring ratios side by side in one run (the machines are
noisy); this driver runs them one after another as subprocesses, keeps their markdown tables and
summary lines, and records the command, wall time, date and machine for each::

    python bench/run_all.py                       # everything (≈ 20–40 min on 2 cores)
    python bench/run_all.py --only step_time,pare  # rerun a subset, keep the other sections
    python bench/run_all.py --quick                # fewer rounds/steps (smoke run)

Each section records its own command, date and wall time, so a subset can be rerun (say, on a
quieter machine) without discarding the others.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name: (title, goal summary, full args, quick args)
BENCHES = {
    "step_time": (
        "Fine-tune step: jitted JAX vs PyTorch eager (same model, batch, optimizer)",
        "goal: JAX ≥ 1.5× faster (geometric mean)",
        [],
        ["--batch_sizes", "8,32", "--tokens", "8,64", "--steps", "3", "--rounds", "2"],
    ),
    "mona": (
        "MoNA meta-step vs plain fine-tune step (time, XLA memory)",
        "goals: exact ≤ 4× time; first-order ≤ 1.5× memory",
        [],
        ["--steps", "2", "--rounds", "2"],
    ),
    "pare": (
        "PaRe step vs fine-tune step; relaxed top-k share; gather vs one-hot",
        "goals: ≤ 2.3× step; top-k ≤ 10 % of the step at N = 3136",
        [],
        ["--reps", "1", "--rounds", "2"],
    ),
    "lsg": (
        "LSG stage-2 step vs plain step; stage-1 on a 4000-node graph",
        "goal: stage 2 ≤ 1.2× the plain step",
        [],
        ["--rounds", "2", "--steps", "2"],
    ),
    "fsdp_memory": (
        "Per-device memory of a RoBERTa-large fine-tune step under data / FSDP meshes (AOT)",
        "FSDP shards params and optimizer state (ZeRO-3); no speed goal on fake devices",
        [],
        ["--variants", "data8,fsdp8"],
    ),
}
TEXT_TABLES = ("step_time", "fsdp_memory")  # fixed-width tables kept whole


def summary_lines(stdout: str) -> list[str]:
    """The markdown table rows and the one-line summaries a benchmark printed."""
    keep = []
    for line in stdout.splitlines():
        s = line.strip()
        if s.startswith("|") or "geometric-mean" in s or s.startswith("goal"):
            keep.append(s)
        elif keep and keep[-1].startswith("|") and not s.startswith("|"):
            keep.append("")  # end of a table
    return keep


def main() -> None:
    """Runs the selected benchmarks and writes ``bench/RESULTS.md``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHES))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        raise SystemExit(f"--only: unknown benchmark(s) {unknown}; expected {sorted(BENCHES)}")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = read_sections(args.out) if len(names) < len(BENCHES) else {}
    for name in names:
        title, goal, full, quick = BENCHES[name]
        extra = quick if args.quick else full
        cmd = [sys.executable, os.path.join("bench", f"{name}.py"), *extra]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - t0
        print(proc.stdout[-4000:], flush=True)
        body = [f"`python {' '.join(cmd[1:])}` — {goal}; {wall:.0f} s, {now}.", ""]
        if proc.returncode != 0:
            body += ["```", f"exit code {proc.returncode}", proc.stderr[-2000:], "```", ""]
        elif name in TEXT_TABLES:
            body += ["```text", proc.stdout.strip(), "```", ""]
        else:
            body += [*summary_lines(proc.stdout), ""]
        sections[title] = "\n".join(body).rstrip()
    out = [
        "# Benchmark results",
        "",
        f"Written by `python bench/run_all.py` (last run: `{' '.join(sys.argv[1:]) or 'all'}`, "
        f"{now}), {platform.machine()} with {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}. Every ratio is measured side by side in one run of its "
        "script; each section names its command, wall time and date.",
        "",
    ]
    for title, *_ in BENCHES.values():  # the benchmarks' order, whatever was rerun
        if title in sections:
            out += [f"## {title}", "", sections[title], ""]
    with open(args.out, "w") as f:
        f.write("\n".join(out).rstrip() + "\n")
    print(f"wrote {args.out}")


def read_sections(path: str) -> dict[str, str]:
    """``{title: body}`` of the ``## title`` sections of an existing RESULTS.md ({} if none)."""
    if not os.path.exists(path):
        return {}
    sections, title, lines = {}, None, []
    with open(path) as f:
        for line in f.read().splitlines():
            if line.startswith("## "):
                if title is not None:
                    sections[title] = "\n".join(lines).strip()
                title, lines = line[3:].strip(), []
            elif title is not None:
                lines.append(line)
    if title is not None:
        sections[title] = "\n".join(lines).strip()
    return sections


if __name__ == "__main__":
    main()
