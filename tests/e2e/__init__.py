"""End-to-end tests: the release binary under the Runtime API emulator, against moto and real etcd.

Run: BOOTSTRAP=target/release/etcd-lifecycle-hook .venv/bin/python -m tests.e2e.run
(or one module: .venv/bin/python -m unittest tests.e2e.test_terminate -v)
"""
