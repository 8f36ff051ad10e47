"""The fault suite's workload: documents, the short timings every scenario starts from."""

from __future__ import annotations

import sys

JOBS = 200
AGENTBUS = [sys.executable, "-m", "agentbus"]

BASE_ENV: dict[str, str] = {
    "AGENTBUS_SUMMARIZER__BACKEND": "simulated",
    "AGENTBUS_SUMMARIZER__SIMULATED_LATENCY_MS": "50",
    "AGENTBUS_TOPOLOGY__ACK_WAIT_S": "2",
    "AGENTBUS_TOPOLOGY__MAX_DELIVER": "5",
    "AGENTBUS_WORKER__CONCURRENCY": "8",
    "AGENTBUS_WORKER__IN_PROGRESS_INTERVAL_S": "0.5",
    "AGENTBUS_WORKER__BACKOFF_S": "[0.2, 0.5]",
    "AGENTBUS_WORKER__FETCH_TIMEOUT_S": "0.5",
    "AGENTBUS_WORKER__GRACE_PERIOD_S": "15",
    "AGENTBUS_NATS__RECONNECT_WAIT_S": "0.25",
    "AGENTBUS_ARCHIVER__FETCH_TIMEOUT_S": "0.25",
    "AGENTBUS_LOG_LEVEL": "INFO",
}


# --- workload ------------------------------------------------------------------------


def small_doc(i: int, marker: str = "") -> str:
    """A single-chunk document (well under any chunk budget)."""
    return (
        f"Report {i} from the river delta. The harbor saw {i % 7 + 1} ferries today. "
        f"Farmers sold salt at the market. {marker}"
    ).strip()


def long_doc(i: int, *, paragraphs: int, marker_at: int | None = None, marker: str = "") -> str:
    """A document of `paragraphs` paragraphs of ~300 chars (one chunk each at 400 chars)."""
    out = []
    for p in range(paragraphs):
        text = (
            f"Section {p} of document {i} describes the estuary in season {p}. "
            f"The tide rose over the levee and the channel carried sediment to the marsh. "
            f"Boats waited at the ferry while the village market traded fresh water and salt. "
            f"Storms in autumn moved the delta, and the bridge was closed for {p + 1} days."
        )
        if p == marker_at:
            text += f" {marker}"
        out.append(text)
    return "\n\n".join(out)
