"""Ensemble recipes: AITHU's DCASE 2022 submissions 1-4 (report §4, Table 10) from trained runs.

python jobs/ensemble.py --runs runs [--recipe all | 1 2 3 4] [--machine-type fan ...] [--registry registry]
                        [--publish best | none | 1-4] [--step 0.1] [--out DIR]

Reads every complete run folder at or below --runs (as jobs/publish.py does: stored scores only, nothing re-scored).
For each recipe and machine type it takes the runs that play the recipe's subsystems (SC with or without the domain
classifier, MHCR, SC-wav2vec, WSP-NFCDEE, IMDN, AEGAN-AD: the best run of each on validation when there are several),
standardizes each member's scores with its training-clip mean and std, grid-searches convex weights (step --step)
that maximize the validation official score, and writes the recipe's bundles and evaluation files under
--out/recipe-<N>/. The recipe with the best validation score (or the one --publish names) is then published to
--registry, served behind the same endpoint with each member's score in the response.
Prints Table 10 beside ours: each recipe's members and weights per machine type, its official score on the
validation and held-out test clips, and the report's number. The test clips choose nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["runs"], help="run folders, or folders holding them (default: runs)")
    p.add_argument("--recipe", nargs="+", default=["all"], help="recipes to run: all, or numbers 1-4 (default: all)")
    p.add_argument("--machine-type", nargs="*", default=None, help="only these machine types")
    p.add_argument("--registry", default="registry", help="where the chosen recipe is published (default: registry)")
    p.add_argument("--publish", default="best",
                   help="best (highest validation official score), a recipe number, or none (default: best)")
    p.add_argument("--step", type=float, default=0.1, help="ensemble weight grid step, 1/K (default: 0.1)")
    p.add_argument("--quantile", type=float, default=0.9, help="gamma quantile of the decision threshold (0.9)")
    p.add_argument("--out", default=None, help="folder for each recipe's bundles and evaluation files "
                                               "(default: <first --runs>/ensembles-<time>)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope.errors import ConfigError, StethoscopeError
    from stethoscope.publishing import discover_runs
    from stethoscope.publishing.recipes import (RECIPES, best_on_validation, format_recipe_table, get_recipe,
                                                run_recipe)

    log = logging.getLogger("ensemble")
    numbers = sorted(RECIPES) if args.recipe == ["all"] else sorted({get_recipe(n).number for n in args.recipe})
    if args.publish not in ("best", "none") and get_recipe(args.publish).number not in numbers:
        raise ConfigError(f"--publish {args.publish}: that recipe is not among --recipe {args.recipe}")
    runs, skipped = discover_runs(args.runs)
    for folder, reason in skipped:
        log.warning("skipping %s: %s", folder, reason)
    if not runs:
        raise StethoscopeError(f"no complete run folder under {args.runs}; run jobs/pipeline.py first")
    out = Path(args.out) if args.out else Path(args.runs[0]) / f"ensembles-{time.strftime('%Y%m%d-%H%M%S')}"
    results, failed = [], []
    for n in numbers:
        try:
            results.append(run_recipe(RECIPES[n], runs, out / f"recipe-{n}" / "registry", out / f"recipe-{n}",
                                      machine_types=args.machine_type, step=args.step, quantile=args.quantile))
        except StethoscopeError as exc:
            failed.append((n, str(exc)))
    if not results:
        raise StethoscopeError("no recipe could be ensembled: " + "; ".join(f"recipe {n}: {r}" for n, r in failed))
    chosen = None
    if args.publish == "best":
        chosen = best_on_validation(results)
    elif args.publish != "none":
        chosen = next((r for r in results if r.recipe.number == int(args.publish)), None)
        if chosen is None:
            raise StethoscopeError(f"--publish {args.publish}: that recipe could not be ensembled")
    published = None
    if chosen is not None:
        published = run_recipe(chosen.recipe, runs, args.registry, out / "published", machine_types=args.machine_type,
                               step=args.step, quantile=args.quantile)
    summary = {"recipes": [r.row() for r in results], "failed": dict(failed),
               "published": None if published is None else {
                   "recipe": published.recipe.number, "registry": str(args.registry),
                   "versions": {r.machine_type: r.version for r in published.results}}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipes.json").write_text(json.dumps(summary, indent=1, default=str))
    print()
    print(format_recipe_table(results))
    for n, reason in failed:
        print(f"recipe {n}: not ensembled: {reason}")
    print(f"\nper-recipe bundles and evaluation files: {out}")
    if published is not None:
        how = "best on validation" if args.publish == "best" else "--publish"
        print(f"published recipe {published.recipe.number} ({how}) to {args.registry}: "
              + ", ".join(f"{r.machine_type} {r.version}" for r in published.results))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
