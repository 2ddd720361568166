"""The real `headrace` CLI with the transaction probe passed, for exactly-once runs on the embedded
broker: `python tests/integration/exactly_once_driver.py stream worker ... --processing-guarantee
exactly_once`.

The embedded broker (Tansu) fails `streams.transactions`' probe -- it hands records of aborted
transactions to read_committed readers -- so the CLI refuses exactly-once there. Its
transactions otherwise work (init, produce, send offsets, commit), so with the probe passed the
worker's whole transactional path runs: Faust's transactional producers, outcomes produced in
each source partition's transaction, offsets committed only through transactions. What the
embedded broker cannot show is the aborted outcomes of a killed worker being hidden; that needs
Apache Kafka (test_real_kafka.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from headrace.cli import main  # noqa: E402
from streams import transactions  # noqa: E402
from streams.transactions import TransactionProbe  # noqa: E402


def _passed(bootstrap: str, timeout_s: float = 0.0) -> TransactionProbe:
    return TransactionProbe(supported=True, producer_started=True, detail="probe passed (test)")


if __name__ == "__main__":
    transactions.require_transactions = _passed
    sys.argv = ["headrace", *sys.argv[1:]]
    main()
