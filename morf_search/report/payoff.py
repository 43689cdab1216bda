"""Did MoRF pay off? Each finalist against the networks the user would otherwise have trained.

Baselines (references.csv rows with engine ``baseline``) got the finalists' compute and were
timed with the same setup: the space's plain network nearest to each finalist in latency,
and the family's own default network. Accuracies are means over ``finalists.seeds``; a
difference's spread is the two standard deviations combined (shown when there are seeds to
spread over).
"""
from __future__ import annotations

import math
from typing import List, Optional

import pandas as pd

FAMILY_DEFAULT = "family default"


def baseline_means(references: pd.DataFrame) -> pd.DataFrame:
    """Per baseline arch: role, how trained, mean and spread of accuracy over seeds, latency, params, seeds."""
    if references.empty or "engine" not in references:
        return pd.DataFrame()
    rows = references[references["engine"] == "baseline"]
    if rows.empty:
        return pd.DataFrame()
    grouped = rows.groupby("arch", sort=False)
    return pd.DataFrame({
        "role": grouped["role"].first(), "trained": grouped["trained"].first(),
        "accuracy": grouped["accuracy"].mean(), "accuracy_std": grouped["accuracy"].std(),
        "latency_ms": grouped["latency_ms"].median(), "params": grouped["params"].first(),
        "seeds": grouped["accuracy"].size(),
    })


def _accuracy(mean: float, std: Optional[float]) -> str:
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None and not pd.isna(std) else "")


def _difference(mean_a, std_a, mean_b, std_b) -> str:
    spread = math.hypot(std_a, std_b) if not (pd.isna(std_a) or pd.isna(std_b)) else None
    return f"{mean_a - mean_b:+.2f}" + (f" ± {spread:.2f}" if spread is not None else "")


def payoff_table(finalists: pd.DataFrame, references: pd.DataFrame) -> pd.DataFrame:
    """One row per finalist: its latency and accuracy, its nearest plain baseline's and the family default's."""
    baselines = baseline_means(references)
    if finalists.empty or baselines.empty:
        return pd.DataFrame()
    default = baselines[baselines["role"].str.startswith(FAMILY_DEFAULT)]
    rows = []
    for _, row in finalists.iterrows():
        std = row.get("accuracy_finetuned_std")
        entry = {"finalist": row["arch"], "latency ms": f"{row['latency_ms']:.3f}",
                 "accuracy %": _accuracy(row["accuracy_finetuned"], std)}
        nearest = row.get("baseline_arch")
        if isinstance(nearest, str) and nearest in baselines.index:
            base = baselines.loc[nearest]
            entry.update({"plain network of similar latency": nearest, "its latency ms": f"{base['latency_ms']:.3f}",
                          "its accuracy %": _accuracy(base["accuracy"], base["accuracy_std"]),
                          "difference (points)": _difference(row["accuracy_finetuned"], std, base["accuracy"],
                                                             base["accuracy_std"])})
        if not default.empty:
            base = default.iloc[0]
            entry.update({"family default accuracy %": _accuracy(base["accuracy"], base["accuracy_std"]),
                          "its latency ms ": f"{base['latency_ms']:.3f}",
                          "difference to default": _difference(row["accuracy_finetuned"], std, base["accuracy"],
                                                               base["accuracy_std"])})
        rows.append(entry)
    return pd.DataFrame(rows)


def payoff_section(finalists: pd.DataFrame, references: pd.DataFrame) -> List[str]:
    """report.md's opening section: the table and how the baselines were trained."""
    table = payoff_table(finalists, references)
    if table.empty:
        return ["## Did MoRF pay off?", "", "_no finalists and baselines trained yet_", ""]
    baselines = baseline_means(references)
    # cells as formatted: tabulate would read "10.510" as a number and print 10.51
    lines = ["## Did MoRF pay off?", "", table.to_markdown(index=False, disable_numparse=True), "",
             "Baselines got the finalists' compute and were timed with the same setup:", ""]
    lines += [f"- `{arch}` ({b['role']}): {b['trained']}, {int(b['seeds'])} seed(s)"
              for arch, b in baselines.iterrows()]
    return lines + [""]
