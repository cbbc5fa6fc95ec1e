"""Seeded chaos runs: the release binary against real etcd and the local Auto Scaling / EC2, with
random lifecycle traffic and random faults, and the invariants checked after every step.

    .venv/bin/python -m tests.chaos --seed 1 --runs 3 --steps 25 --time-budget 110   # CI form
    .venv/bin/python -m tests.chaos --seed 1000 --runs 200 --steps 40 --jobs 3 \\
        --time-budget 2400 --out .stack/chaos                                        # long form
    .venv/bin/python -m tests.chaos --seed 1042 --runs 1 --steps 40 --keep           # one run again

Run i of `--seed S` uses seed S+i, so any run is reproduced alone with `--seed S+i --runs 1`: the
same seed makes the same chaos decisions (what to do at each step, to which instance by creation
order, which fault); etcd's elections and the retry jitter are real, so timings differ.

Nothing is faked on the function's side: each step is a real change to the world (a lifecycle
action started in the stack, an etcd node stopped, an AWS fault injected) and, for deliveries, a
real invocation of the bootstrap under the Runtime API emulator. The world around the function is
modelled as AWS and the nodes behave: a completed terminate terminates the instance (its etcd node
dies with it), an instance can die outside the hooks, and a launched instance's node starts etcd
once it has a member (a learner the function added, or one its bootstrap script adds).

Invariants (see world.py for the exact rules): quorum kept unless the chaos itself downed too many
nodes (and no delivery ever turns a quorate cluster into one without quorum); no member of a
running, non-terminating instance removed; no hold or failure answered as success; no lifecycle
action lost (left without a heartbeat or completion longer than the hooks' heartbeat timeout); no
answer after the invocation's deadline; and at the end, once faults clear, every action completed
and every terminated instance's member removed.
"""
