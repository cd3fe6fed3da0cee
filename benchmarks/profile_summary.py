"""Where a training process spends its time, from py-spy's raw samples (``py-spy record --format raw``).

    python benchmarks/profile_summary.py PROFILE.txt [--process steps/train.py]
        [--within IterBasedTrainLoop.run_iter] [--top 25]

Keeps the samples of the process whose command line names --process and whose stack passes
through --within (one training iteration), then prints the functions that were running
(self) and those on the stack (inclusive), as shares of those samples. With ``--idle``
sampling, time spent waiting (for the GPU, for a lock, for data) shows as the waiting call.
"""

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:()]+)(:\d+)?\)$")


def split(stack: str) -> tuple[str, list[str]]:
    """The innermost process of a raw stack (its command line) and its frames, outermost first,
    as 'function (file)' without line numbers."""
    fields = stack.split(";")
    last = max(i for i, field in enumerate(fields) if field.startswith("process "))
    named = []
    for frame in fields[last + 1:]:
        match = FRAME.match(frame)
        named.append(f"{match['function']} ({match['file']})" if match else frame)
    return fields[last], named


def summarize(lines: list[str], process: str, within: str) -> tuple[int, Counter, Counter]:
    own, inclusive, total = Counter(), Counter(), 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        command, named = split(stack)
        if process not in command or not any(frame.startswith(f"{within} (") for frame in named):
            continue
        total += int(count)
        own[named[-1]] += int(count)
        for frame in set(named):
            inclusive[frame] += int(count)
    return total, own, inclusive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--process", default="steps/train.py", help="text in the profiled process's command line")
    parser.add_argument("--within", default="IterBasedTrainLoop.run_iter",
                        help="function every counted stack passes through (EpochBasedTrainLoop.run_iter by epochs)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    total, own, inclusive = summarize(args.profile.read_text().splitlines(), args.process, args.within)
    if not total:
        raise SystemExit(f"{args.profile}: no samples of a {args.process} process inside {args.within}")
    print(f"{total} samples of {args.process} inside {args.within}")
    for title, counts in (("self", own), ("inclusive", inclusive)):
        print(f"-- {title}")
        for frame, samples in counts.most_common(args.top):
            print(f"{samples / total:6.1%}  {frame}")


if __name__ == "__main__":
    main()
