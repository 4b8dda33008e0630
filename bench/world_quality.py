"""Quality bar of an embedded model: oracle-scored generations from held-out prompts, by number of objects.

Usage: python bench/world_quality.py [--n 512] [--steps 8] [--weights DIR] [--guidance G] [--objects 1,2,3]
                                     [--world classic|rich]
`--weights` is a model folder or a `world train` folder (its latest EMA checkpoint: an early read of a running job).
Prints per-attribute accuracy per object count (1: the model card's single-object measure; 2 and 3: every
object matched by grid cell, `count_acc` = the right number of objects, `bound_acc` = each object's named
attributes all right); the last line is JSON.
"""

import argparse
import json
import time

from difflens.embedded import DEFAULT_STEPS
from difflens.embedded.pipeline import WEIGHTS_DIR
from difflens.embedded.quality import measure_quality
from difflens.embedded.train import load_trained

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=512)
parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
parser.add_argument("--weights", default=str(WEIGHTS_DIR))
parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
parser.add_argument("--objects", default="1", help="object counts to score, e.g. 1,2,3")
parser.add_argument("--world", default=None, help="classic or rich (default: the model's)")
args = parser.parse_args()

pipe = load_trained(args.weights).use_guidance(args.guidance)
results = {}
for n_objects in (int(v) for v in args.objects.split(",")):
    start = time.time()
    result = measure_quality(pipe, n=args.n, num_steps=args.steps, n_objects=n_objects, world=args.world)
    print(f"{args.n} {result['split']} {result['world']} prompts with {n_objects} object(s), {args.steps} steps, "
          f"guidance {result['guidance']}, {time.time() - start:.1f} s")
    for key, value in result.items():
        print(f"  {key:16s} {value}")
    results[n_objects] = result
print(json.dumps(results))
