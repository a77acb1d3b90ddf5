"""The trainer builds each next step's batches while the device finishes the step before
(``Trainer._build_ahead``, ``wmtp.train.data_source.Lookahead``): every step but the last has
its successor built ahead, and the data state a checkpoint saves is the one before it. (That a
resumed run then trains on the batches an uninterrupted one does is ``test_resume``'s.)"""

from __future__ import annotations

import json

from tests.train.train_helpers import FAST, TINY
from wmtp.parallel import init_distributed
from wmtp.recipe import dump_recipe, load_recipe
from wmtp.train.loop import Trainer

STEPS = 3


def test_every_step_but_the_last_builds_the_next_and_checkpoints_keep_the_state_before(tmp_path):
    steps = [f"training.max_steps={STEPS}", "training.schedule.warmup_steps=1"]
    recipe = load_recipe(TINY, [*FAST, *steps, "parallel.device='cpu'"]).recipe
    trainer = Trainer(recipe, dump_recipe(recipe), tmp_path, init_distributed("cpu"), console=False)
    trainer.build()
    # the same data, never built ahead: the state after each step as a checkpoint must hold it
    plain = trainer.pipeline.batch_source(trainer, trainer.data)
    for step in range(1, STEPS + 1):
        record = trainer.train_step(None)
        trainer.step += 1
        plain.next_step()
        assert (trainer.batches._ahead is not None) == (step < STEPS), step
        saved = json.loads(json.dumps(trainer.batches.state_dict()))  # as trainer.json keeps it
        assert saved == plain.state_dict(), step
        assert record["data_time_s"] > 0
    # no step was built past the last: the next batches are the plain source's next
    after, expected = trainer.batches.next_step(), plain.next_step()
    assert [b["input_ids"].tolist() for b in after] == [b["input_ids"].tolist() for b in expected]
