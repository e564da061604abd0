"""The engine wing: what runs inside the training iteration.

It knows a ``PlanSource`` (``plan_source``) and nothing else about planning: it never imports
``swiftmoe.planning``, the simulator or the report (pyshim/tests/test_import_graph.py reads the
imports to keep it so). Its modules, from the entry point down:

* ``replicate``: ``replicate_`` checks the config, finds the blocks (``blocks``), agrees on the
  plan source through a factory it is handed, and builds the pieces below;
* ``handle``: ``SwiftMoEHandle``, the public calls, delegated to a mode of ``modes``
  (``ReplicateRun``, ``ObserveRun``);
* ``layer`` (``ExpertLayer``, with its ``LayerContext``) and ``observed`` (``ObservedLayer``):
  one MoE block each; ``stats``: the load buffers and ``StepStats``;
* ``dispatch``: the index math of the all-to-all; ``dist``: the collectives;
* ``split``: the token split; ``splitter``: this rank's checked part of it;
* ``optim``: the sharded expert optimizer and the remap; ``checkpoint``: sharded state and
  consolidated export, through a ``CheckpointView``;
* ``plans``: rank 0's conversation with the plan source and the broadcast of its answer;
* ``config``, ``plan`` (the plan rules shared with Go) and ``plan_source`` (the protocol).
"""
