"""Who wakes the CPUs while a command trains: context switches per second, per process, from /proc (Linux).

    python -m bench.wakeups [--after 20] [--window 5] -- COMMAND...
    python -m bench.wakeups -- python -m bench.overhead --arm ray --workload ner --cpus=2
    python -m bench.wakeups -- python -m bench.overhead --arm plain --workload ner --cpus=2

Starts COMMAND, waits ``--after`` seconds (past start-up, into training), then counts every thread's
voluntary switches (it slept and was woken: a wake-up) and involuntary switches (it was preempted)
over ``--window`` seconds, summed per process name, and waits for COMMAND to end. The process that
used the most CPU in the window is the trainer: its involuntary switches/s say how often something
else took a core from it. This is how README's Performance section explains the NER overhead of [1]
on 2 cores: Ray's processes wake ~2,000 times/s (each Ray worker process has a 10 ms signal-check
timer), and a Train worker whose torch threads hold every core is preempted ~1,300 times/s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CLK = os.sysconf("SC_CLK_TCK")


def snapshot() -> dict[tuple[str, str], tuple[str, int, int, int]]:
    """(pid, tid) -> (process name, voluntary, involuntary switches, CPU ticks) of every thread readable now."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            name = open(f"/proc/{pid}/comm").read().strip()
            for tid in os.listdir(f"/proc/{pid}/task"):
                fields = dict(ln.split(":", 1) for ln in open(f"/proc/{pid}/task/{tid}/status") if ":" in ln)
                stat = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
                out[(pid, tid)] = (
                    name,
                    int(fields["voluntary_ctxt_switches"]),
                    int(fields["nonvoluntary_ctxt_switches"]),
                    int(stat[11]) + int(stat[12]),
                )
        except (OSError, KeyError, ValueError, IndexError):  # a thread that ended between listing and reading
            continue
    return out


def per_process(before: dict, after: dict, window_s: float) -> list[dict]:
    """Rates over the window, summed over each process name's threads (threads alive at both ends)."""
    rows: dict[str, dict] = {}
    for key, (name, vol, invol, ticks) in after.items():
        if key not in before:
            continue
        r = rows.setdefault(name, {"name": name, "pids": set(), "wakeups_s": 0.0, "preempted_s": 0.0, "cpu": 0.0})
        r["pids"].add(key[0])
        r["wakeups_s"] += (vol - before[key][1]) / window_s
        r["preempted_s"] += (invol - before[key][2]) / window_s
        r["cpu"] += (ticks - before[key][3]) / CLK / window_s
    return sorted(rows.values(), key=lambda r: -r["wakeups_s"])


def report(rows: list[dict], top: int = 15) -> str:
    trainer = max(rows, key=lambda r: r["cpu"]) if rows else None
    lines = [
        f"total wake-ups {sum(r['wakeups_s'] for r in rows):,.0f}/s"
        + (
            f"; busiest process {trainer['name']!r}: {trainer['cpu']:.2f} cores, preempted {trainer['preempted_s']:,.0f}/s"
            if trainer
            else ""
        ),
        f"{'process':<32}{'n':>4}{'wake-ups/s':>12}{'preempted/s':>13}{'cores':>7}",
    ]
    for r in rows[:top]:
        lines.append(
            f"{r['name'][:31]:<32}{len(r['pids']):>4}{r['wakeups_s']:>12,.0f}{r['preempted_s']:>13,.0f}{r['cpu']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wakeups", description=__doc__.split("\n\n")[0])
    p.add_argument("--after", type=float, default=20.0, help="seconds after COMMAND starts before the window opens")
    p.add_argument("--window", type=float, default=5.0, help="seconds counted")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ... (nothing: just sample the machine now)")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not os.path.isdir("/proc/self/task"):
        print("bench.wakeups: needs Linux /proc", file=sys.stderr)
        return 2
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if cmd else None
    try:
        time.sleep(args.after if proc else 0)
        if proc is not None and proc.poll() is not None:
            print(
                f"bench.wakeups: the command ended (exit {proc.returncode}) before the window opened — lower --after",
                file=sys.stderr,
            )
            return 2
        before = snapshot()
        time.sleep(args.window)
        rows = per_process(before, snapshot(), args.window)
        print(report(rows), flush=True)
        return proc.wait() if proc is not None else 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
