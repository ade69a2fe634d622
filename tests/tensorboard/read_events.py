"""Reads a kdc run folder's TensorBoard event files with TensorBoard's own loader.

    python tests/tensorboard/read_events.py RUNDIR OUT.json

Writes {"seed-7": {"teach/train_loss": [[step, value, wall_time], ...], ...}, ...}: every
scalar of every run (seed folder) under RUNDIR/tensorboard, as TensorBoard's
EventAccumulator sees it.
"""

import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator


def main():
    run, out = sys.argv[1], sys.argv[2]
    root = os.path.join(run, "tensorboard")
    seen = {}
    for name in sorted(os.listdir(root)):
        acc = event_accumulator.EventAccumulator(
            os.path.join(root, name), size_guidance={event_accumulator.SCALARS: 0}
        )
        acc.Reload()
        seen[name] = {
            tag: [[e.step, e.value, e.wall_time] for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]
        }
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    main()
