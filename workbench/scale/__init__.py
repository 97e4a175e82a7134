"""Beyond one process: reducer analyses and captures fanned out over Ray, transcoder training over DDP.

- `cluster`: `Workers` (how many, which Ray cluster) and `ray_session`; Ray is an optional extra
  (`pip install 'interp-workbench[scale]'`), imported only when workers are asked for.
- `recipe`: how a worker loads its own copy of the model (`ModelRecipe`), checked against the driver's.
- `fold`: reducers folded over disjoint window ranges on Ray workers, merged in range order.
- `capture`: a capture written by one Ray task per token range into one coordinated store
  (`workbench.store.ranges`), resumable range by range.
- `ddp`: the process group, launcher and collectives that distributed transcoder training uses.

Nothing here imports Ray or torch.distributed at module level.
"""
