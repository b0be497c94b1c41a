"""
The benchmark's report: the machine it ran on, and the runs as Markdown
tables with the targets of issues 3 and 5.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from typing import Any

from components import cpuModel
from twisted.internet import threads

TARGET_POSTFIX_RATIO = 4.0
TARGET_RSS_MB = 150
TARGET_PIPELINING_RATIO = 2.0
TARGET_100K_DKIM_RATE = 750


def _command(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"


REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _describeTree(tree: str) -> str:
    """
    C{git describe --always --dirty} of C{tree} when it is the top of a Git
    work tree, else C{"tree DIR"} (an export: the variant's name, or the
    report's note, should say which commit it is).
    """
    tree = os.path.realpath(tree)
    top = _command(["git", "-C", tree, "rev-parse", "--show-toplevel"])
    if top and os.path.realpath(top) == tree:
        return _command(["git", "-C", tree, "describe", "--always", "--dirty"])
    return f"tree {tree}"


def describeTree(reactor: Any, tree: str) -> Any:
    """@return: a Deferred firing with what L{_describeTree} says of C{tree}."""
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), _describeTree, tree)


def _machine(tree: str) -> dict[str, Any]:
    with open("/proc/meminfo") as f:
        memory = int(f.readline().split()[1]) * 1024
    import txamqp  # noqa: F401

    import twisted

    try:
        from importlib.metadata import version

        txamqpVersion = version("txamqp")
    except Exception:
        txamqpVersion = "unknown"
    commit = _describeTree(tree)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpuModel(),
        "memoryGB": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "txamqp": txamqpVersion,
        "rabbitmq": _command(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"]),
        "erlang": _command(["dpkg-query", "-W", "-f", "${Version}", "erlang-base"]),
        "postfix": _command(["postconf", "-d", "-h", "mail_version"]),
        "mqtwistCommit": commit,
        # the benchmark's own code (and the mqtwist it publishes with)
        "benchCommit": _describeTree(REPOSITORY),
        "loadAverageAtStart": os.getloadavg(),
    }


def machine(reactor: Any, tree: str) -> Any:
    """
    @param tree: the mqtwist source tree that is measured.
    @return: a Deferred firing with a dict describing this machine and the
        software versions.
    """
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), _machine, tree)


def _spread(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    fmt = f"{{:,.{digits}f}}"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _byLabel(runs: list[dict[str, Any]], scenarios: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if run["scenario"] in scenarios and not run["error"]:
            grouped.setdefault(run["label"], []).append(run)
    return grouped


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def comparison(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """
    The variants of C{--compare} side by side, per throughput scenario
    (C{mqtwist-1}, C{mqtwist-n}): each variant's rates and mqtwist CPU
    microseconds per message run by run (in run order), their medians, and
    the ratios to the first variant's -- of the medians, and run by run
    against the first variant's run of the same round -- and to Postfix's
    median rate.  Failed runs are left out (the report lists them).
    """
    runs = data["runs"]
    postfix = _median([r["rate"] for r in runs if r["scenario"] == "postfix" and not r["error"]])
    result: dict[str, list[dict[str, Any]]] = {}
    for scenario in ("mqtwist-1", "mqtwist-n"):
        rows = []
        for variant in data["variants"]:
            mine = [r for r in runs if r["scenario"] == scenario and r["variant"] == variant["name"]
                    and not r["error"]]
            if not mine:
                continue
            cpu = [1e6 * r["cpuSeconds"] / r["messages"] for r in mine if r["cpuSeconds"] is not None]
            median = statistics.median(r["rate"] for r in mine)
            rows.append({
                "variant": variant["name"],
                "label": mine[0]["label"],
                "rounds": [r["round"] for r in mine],
                "rates": [r["rate"] for r in mine],
                "medianRate": median,
                "cpuMicrosecondsPerMessage": cpu,
                "medianCpuMicrosecondsPerMessage": _median(cpu),
                "ratioToPostfix": median / postfix if postfix else None,
            })
        if not rows:
            continue
        first = rows[0]
        firstByRound = dict(zip(first["rounds"], first["rates"]))
        for row in rows:
            row["ratioToFirst"] = row["medianRate"] / first["medianRate"]
            perRound = [rate / firstByRound[n] for n, rate in zip(row["rounds"], row["rates"]) if n in firstByRound]
            row["roundRatiosToFirst"] = perRound
            row["medianRoundRatioToFirst"] = _median(perRound)
            cpu, firstCpu = row["medianCpuMicrosecondsPerMessage"], first["medianCpuMicrosecondsPerMessage"]
            row["cpuRatioToFirst"] = cpu / firstCpu if cpu is not None and firstCpu else None
        result[scenario] = rows
    return result


def _comparisonMarkdown(data: dict[str, Any]) -> list[str]:
    compared = data.get("comparison") or {}
    if not compared:
        return []
    o = data["options"]
    out = [
        "", "## Variants compared", "",
        f"The throughput runs took turns: in each of the {o['repeat']} rounds every variant ran once per "
        "configuration, first in a rotated order (A B, then B A, ...), then Postfix (when it runs). "
        "`× first`: the median rate over the first variant's median; `per round`: each run over the "
        "first variant's run of the same round (their median, then each), which cancels what the "
        "machine's speed drifts from one round to the next. CPU: user + system seconds of the mqtwist "
        "process(es) while timed, per message. The other scenarios (delay, waiting, profile) ran the "
        "first variant only.",
        "",
        "| variant | mqtwist | options added |", "|---|---|---|",
    ]
    for v in data["variants"]:
        out.append(f"| {v['name']} | {v['commit']} | {('`' + v['args'] + '`') if v['args'] else '-'} |")
    for rows in compared.values():
        out += [
            "", f"### {rows[0]['label'].rsplit(', ', 1)[0]}", "",
            "| variant | messages/s, run by run | median | × first | × first per round | × Postfix "
            "| CPU µs per message, run by run | median | × first |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            perRound = row["roundRatiosToFirst"]
            out.append(
                f"| {row['variant']} | {', '.join(f'{x:,.0f}' for x in row['rates'])} "
                f"| {row['medianRate']:,.0f} | {row['ratioToFirst']:.3f} "
                f"| {_fmt(row['medianRoundRatioToFirst'], 3)} ({', '.join(f'{x:.3f}' for x in perRound)}) "
                f"| {_fmt(row['ratioToPostfix'], 2)} "
                f"| {', '.join(f'{x:.0f}' for x in row['cpuMicrosecondsPerMessage']) or '-'} "
                f"| {_fmt(row['medianCpuMicrosecondsPerMessage'], 0)} | {_fmt(row['cpuRatioToFirst'], 3)} |")
    return out


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    o = data["options"]
    runs = data["runs"]
    if data.get("comparison"):
        mqtwist = "; ".join(f"{v['name']} = mqtwist {v['commit']}" for v in data["variants"])
    else:
        mqtwist = f"mqtwist {m['mqtwistCommit']}"
    if m.get("benchCommit") and m["benchCommit"] != m["mqtwistCommit"]:
        mqtwist += f" (benchmark code: {m['benchCommit']})"
    out = [
        f"# mqtwist benchmark `{o['name']}`, {data['started']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memoryGB']} GB, Linux {m['kernel']}; "
        f"Python {m['python']}, Twisted {m['twisted']}, txamqp {m['txamqp']}, "
        f"RabbitMQ {m['rabbitmq']} (Erlang {m['erlang']}), Postfix {m['postfix']}; "
        f"{mqtwist}; load average at start {', '.join(f'{x:.2f}' for x in m['loadAverageAtStart'])}.",
        "",
        f"Messages of {o['size']:,} bytes{', DKIM-signed (2048-bit RSA)' if o['dkim'] else ''}; "
        f"{o['count']:,} per throughput run, {o['repeat']} run(s) of each; median (min–max) when "
        f"there are several runs.",
    ]
    if o.get("mqtwist_args"):
        out += ["", f"Every mqtwist process ran with `--smarthost 127.0.0.1:PORT --plugins= {o['mqtwist_args']}` "
                f"and defaults otherwise."]
    if o.get("note"):
        out += ["", f"Note: {o['note']}"]

    throughput = _byLabel(runs, ("mqtwist-1", "mqtwist-n", "postfix"))
    postfixRates = [r["rate"] for r in runs if r["scenario"] == "postfix" and not r["error"]]
    postfix = statistics.median(postfixRates) if postfixRates else None
    if throughput:
        out += [
            "", "## Throughput", "",
            "mqtwist: from the moment the process(es) start consuming the outbox until the last `success` "
            "result has arrived (counted by a consumer). Postfix: from the first `smtp-source` injection "
            "until its queue is empty. Both deliver to the same `smtp-sink`.",
            "",
            "| configuration | runs | messages/s | × Postfix | peak RSS per process (MB) "
            "| mqtwist CPU s per 1,000 | machine CPU s per 1,000 |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, group in throughput.items():
            rates = [r["rate"] for r in group]
            ratio = _spread([x / postfix for x in rates], 2) if postfix else "-"
            rss = [max(r["peakRSS"]) / 2**20 for r in group if r["peakRSS"]]
            cpu = [1000 * r["cpuSeconds"] / r["messages"] for r in group if r["cpuSeconds"] is not None]
            machineCPU = [1000 * r["machineCPUSeconds"] / r["messages"] for r in group]
            out.append(f"| {label} | {len(group)} | {_spread(rates)} | {ratio} | {_spread(rss)} "
                       f"| {_spread(cpu, 2)} | {_spread(machineCPU, 2)} |")
    out += _comparisonMarkdown(data)

    delay = [r for r in runs if r["scenario"] == "delay" and not r["error"]]
    if delay:
        out += [
            "", f"## Round trips: replies {o['delay_ms']:g} ms late", "",
            f"{o['delay_count']:,} messages through a relay that holds every reply of `smtp-sink` for "
            f"{o['delay_ms']:g} ms, with `--max-connections-per-destination {o['delay_connections']}`; "
            f"lock-step means `smtp-sink -p` (no PIPELINING announced).",
            "",
            "| configuration | runs | messages/s | per connection |",
            "|---|---|---|---|",
        ]
        for label, group in _byLabel(delay, ("delay",)).items():
            rates = [r["rate"] for r in group]
            out.append(f"| {label} | {len(group)} | {_spread(rates, 1)} "
                       f"| {_spread([x / group[0]['connections'] for x in rates], 1)} |")

    waiting = [r for r in runs if r["scenario"] == "waiting" and not r["error"]]
    for r in waiting:
        out += [
            "", "## Memory with a full outbox", "",
            f"{o['waiting']:,} messages published, then one mqtwist process (default prefetch) consumed "
            f"for {o['waiting_seconds']:g} s: it delivered {r['extra']['delivered']:,}, "
            f"{r['extra']['stillWaiting']:,} were still waiting; peak RSS {max(r['peakRSS']) / 2**20:.0f} MB. "
            f"RSS each second (MB): {', '.join(str(x) for x in r['extra']['rssSamplesMB'])}.",
        ]

    out += ["", "## Targets", ""]
    # with --compare, the figures of each variant, named
    variants = [v["name"] for v in data.get("variants", [])] or [""]
    nRunsOf = {v: [r for r in runs if r["scenario"] == "mqtwist-n" and not r["error"]
                   and (r.get("variant") or "") == v] for v in variants}
    for v, vRuns in nRunsOf.items():
        if vRuns and postfix:
            ratio = statistics.median(r["rate"] for r in vRuns) / postfix
            out.append(f"- One process per core at least {TARGET_POSTFIX_RATIO:g}× Postfix"
                       f"{f' ({v})' if v else ''}: "
                       f"**{ratio:.2f}×** — {'met' if ratio >= TARGET_POSTFIX_RATIO else 'not met'}.")
    for r in waiting:
        peak = max(r["peakRSS"]) / 2**20
        out.append(f"- Peak RSS under {TARGET_RSS_MB} MB with {o['waiting']:,} waiting: **{peak:.0f} MB** — "
                   f"{'met' if peak < TARGET_RSS_MB else 'not met'}.")
    piped = [r["rate"] for r in delay if r["pipelining"]]
    lock = [r["rate"] for r in delay if r["pipelining"] is False]
    if piped and lock:
        ratio = statistics.median(piped) / statistics.median(lock)
        out.append(f"- PIPELINING at least {TARGET_PIPELINING_RATIO:g}× lock-step per connection at "
                   f"{o['delay_ms']:g} ms: **{ratio:.2f}×** — "
                   f"{'met' if ratio >= TARGET_PIPELINING_RATIO else 'not met'}.")
    for v, vRuns in nRunsOf.items():
        if o["size"] < 100_000 or not vRuns:
            continue
        rate = statistics.median(r["rate"] for r in vRuns)
        out.append(f"- {o['size']:,}-byte messages{' signed' if o['dkim'] else ''} at "
                   f"{TARGET_100K_DKIM_RATE} messages/s on 2 CPUs{f' ({v})' if v else ''}: **{rate:,.0f}/s** — "
                   f"{'met' if rate >= TARGET_100K_DKIM_RATE else 'not met'}"
                   f"{'' if o['dkim'] else ' (unsigned: the signed target needs --dkim)'}.")

    for r in runs:
        profile = r["extra"].get("profile")
        if not profile:
            continue
        out += [
            "", "## Profile", "",
            f"py-spy, {o['profile_seconds']:g} s at 100 Hz on one mqtwist process under the "
            f"{o['size']:,}-byte load ({r['rate']:,.0f} messages/s while sampled, with py-spy's own cost); "
            f"{profile['samples']:,} non-idle samples ({profile['busyPercent']}% of the sampling time; the "
            f"reactor thread and the thread pool are counted separately). Shares are of those samples; "
            f"raw stacks: `{profile.get('raw', '')}`.",
            "", "| group | own time % | inclusive % |", "|---|---|---|",
        ]
        inclusive = dict(profile["inclusiveByGroup"])
        for group, share in profile["ownByGroup"]:
            out.append(f"| {group} | {share} | {inclusive.get(group, '')} |")
        out += ["", "| function (own time) | % |", "|---|---|"]
        for function, share in profile["topOwn"]:
            out.append(f"| `{function}` | {share} |")
        out += ["", "| function (inclusive) | % |", "|---|---|"]
        for function, share in profile.get("topInclusive", []):
            out.append(f"| `{function}` | {share} |")

    failed = [r for r in runs if r["error"]]
    if failed:
        out += ["", "## Runs that failed", ""]
        for r in failed:
            error = r["error"] if len(r["error"]) < 2000 else r["error"][:500] + "\n[...]\n" + r["error"][-1500:]
            out += [f"- {r['label']}:", "", "  ```", *("  " + line for line in error.splitlines()), "  ```"]
    return "\n".join(out) + "\n"
