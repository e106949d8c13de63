"""Could a run choose its method without target labels? Per task and seed, pick one of
several methods' finished runs by a criterion each run logs without target labels, and
compare the gap the pick covers with a fixed choice and with the best pick (target labels).

    python docs/label_free_choice.py --runs results/runs --methods dann,cdan-e,recommended

`--runs` is the `runs` folder that `python -m grl_cuda.results` wrote; it needs those
methods, source-only and target-only on seeds 0..--seeds-1 of every task it finds.
Criteria, from each run's last five logged training batches and its summary:
IM (the target predictions' marginal entropy minus their mean entropy; SHOT's
information maximisation), the mean target prediction entropy, the proxy A-distance of
the features, and the held-out source accuracy.
"""

import argparse
import json
import os
import statistics

CRITERIA = {  # name -> score to maximise
    "IM (marginal minus conditional entropy), max": lambda r: r["im"],
    "target prediction entropy, min": lambda r: -r["entropy"],
    "proxy A-distance, min": lambda r: -r["pad"],
    "source test accuracy, max": lambda r: r["source"],
}


def read_run(folder):
    summary = json.load(open(os.path.join(folder, "summary.json")))
    records = [json.loads(line) for line in open(os.path.join(folder, "metrics.jsonl"))]
    last = [r for r in records if r.get("kind") == "train"][-5:]
    entropy = statistics.fmean(r["target_entropy"] for r in last)
    marginal = statistics.fmean(r["target_marginal_entropy"] for r in last)
    return {"acc": summary["target_test_acc"], "source": summary["source_test_acc"],
            "pad": summary["proxy_a_distance"], "im": marginal - entropy, "entropy": entropy}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True)
    parser.add_argument("--methods", default="dann,cdan-e,recommended")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    tasks = sorted(t for t in os.listdir(args.runs)
                   if all(os.path.isdir(os.path.join(args.runs, t, m)) for m in methods + ["source-only", "target-only"]))

    def acc(task, method, seed):
        return read_run(os.path.join(args.runs, task, method, f"seed{seed}"))

    choices = [f"fixed: {m}" for m in methods] + ["best pick (target labels)"] + list(CRITERIA)
    print("| choice | " + " | ".join(tasks) + " | mean gap | runs below source only |")
    print("|---" * (len(tasks) + 3) + "|")
    for choice in choices:
        cells, gaps = [], []
        for task in tasks:
            task_gaps = []
            for seed in range(args.seeds):
                runs = {m: acc(task, m, seed) for m in methods}
                if choice.startswith("fixed: "):
                    pick = choice[len("fixed: "):]
                elif choice.startswith("best pick"):
                    pick = max(runs, key=lambda m: runs[m]["acc"])
                else:
                    pick = max(runs, key=lambda m: CRITERIA[choice](runs[m]))
                so, to = acc(task, "source-only", seed)["acc"], acc(task, "target-only", seed)["acc"]
                task_gaps.append(100 * (runs[pick]["acc"] - so) / (to - so))
            gaps += task_gaps
            cells.append(f"{statistics.fmean(task_gaps):.1f}%")
        below = sum(g < 0 for g in gaps)
        print(f"| {choice} | " + " | ".join(cells) + f" | {statistics.fmean(gaps):.1f}% | {below}/{len(gaps)} |")


if __name__ == "__main__":
    main()
