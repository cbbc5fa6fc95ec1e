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
dies with it), an instance can die outside the hooks, a launched instance's node starts etcd once
it has a member (a learner the function added, or one its bootstrap script adds), and an instance
whose hooks into a warm pool are done rests there stopped (its etcd node with it).

Each run's seed also picks its layout (run.py `choose_topology`; every three consecutive seeds meet
each at least once): one group or one cluster over two or three groups (one per zone, all in
`ASG_NAMES`); Spot instances, scaled in like any other or interrupted (Spot request
`marked-for-termination`, then the terminate hook; the instance is reclaimed when the notice ends);
another tool's terminate hook on every group, listed first, with `LIFECYCLE_HOOK_NAMES` naming only
ours (that tool completes its own actions; its events reach the function too); learners on launch,
with instance refreshes (a launch, then the old instance's terminate once the new one is
InService); deliveries in pairs on the two execution environments (two terminates at once, an
event and a sweep at once); a warm pool on every group (never with Spot instances, as in AWS):
scale-ins back to the pool (`Warmed:Pending:Wait` on the terminate hooks, only DescribeWarmPool
lists it; then `Warmed:Stopped`) and launches into it (the same wait, on the launch hooks).
Instances are also stopped in EC2 and started again.

Invariants (see world.py for the exact rules): quorum kept unless the chaos itself downed too many
nodes (and no delivery ever turns a quorate cluster into one without quorum); no member of a
running, non-terminating instance removed (one going back to or resting in a warm pool is
leaving); no member that answers removed except through its own instance's terminate; never fewer voting members than `ETCD_MIN_VOTERS` after a removal; no other
hook's lifecycle action completed or heartbeated (not even tried); no hold or failure answered as
success; no lifecycle action lost (left without a heartbeat or completion longer than the hooks'
heartbeat timeout); no answer after the invocation's deadline; and at the end, once faults clear,
every action completed (a terminate held at the voter floor with no learner to promote is the
contract, not a failure), the member of every terminated instance and of every instance resting
stopped in a warm pool removed, and with learners on every InService instance has a member.
"""
