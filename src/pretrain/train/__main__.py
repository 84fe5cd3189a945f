"""``python -m pretrain.train --config URL [key=value ...]``: the one training entry point.

Run by ``torchrun`` locally and inside a PyTorchJob/TrainJob; it reads only torchrun's environment.
"""

from __future__ import annotations

import argparse
import os
import sys

from pretrain import storage
from pretrain.config import load_recipe
from pretrain.train.loop import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.train", description=__doc__)
    parser.add_argument("--config", required=True, help="resolved recipe (YAML/JSON path or s3:// URL)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.config, args.overrides)
    summary = train(recipe)
    if int(os.environ.get("RANK", "0")) == 0:
        storage.write_json(recipe.url("train", "summary.json"), summary)
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is written and the process group destroyed; skip the interpreter's teardown, where a rank
    # was seen (rarely, under load) to hang forever joining gloo's threads after its peer had exited.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
