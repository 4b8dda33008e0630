"""Quality bar of the shipped embedded model: oracle-scored generations from held-out prompts.

Usage: python bench/world_quality.py [--n 512] [--steps 8] [--weights DIR]
Prints per-attribute accuracy; the last line is JSON.
"""

import argparse
import json
import time

from difflens.embedded import DEFAULT_STEPS
from difflens.embedded.pipeline import WEIGHTS_DIR, ShapesPipeline
from difflens.embedded.quality import measure_quality

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=512)
parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
parser.add_argument("--weights", default=str(WEIGHTS_DIR))
args = parser.parse_args()

start = time.time()
result = measure_quality(ShapesPipeline.from_pretrained(args.weights), n=args.n, num_steps=args.steps)
print(f"{args.n} held-out single-object prompts, {args.steps} steps, guidance {result['guidance']}, "
      f"{time.time() - start:.1f} s")
for key, value in result.items():
    print(f"  {key:16s} {value}")
keys = ("color_acc", "shape_acc", "position_acc", "background_acc", "size_acc", "one_object_acc", "steps",
        "guidance", "n")
print(json.dumps({k: result[k] for k in keys}))
